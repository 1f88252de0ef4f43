"""The trade-off of merge weights for a finished benchmark run: its fine-tuned model merged with the base model at
other weights, scored on the validation sets and on both test sets (MedQuAD test/, consumer_questions/).

    python bench/merge_sweep.py bench/out/final 0.3,0.5,0.7 [--max-seq-length 256] [--sets val,consumer_questions]

The saved model is already a merge, M = a0 * F + (1 - a0) * B at the weight a0 the run chose (reports/train); the
weight a of F is M merged with B at a / a0. Prints one JSON line per weight; fp32, at --max-seq-length tokens
(default 128, as the evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from pipeline.data.readers import read_beir  # noqa: E402
from pipeline.eval.metrics import per_query_metrics, summary  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.retrieval import dense_run  # noqa: E402
from pipeline.training.merge import merged_state  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 100, "recall_k": [10], "depth": 100}


def main() -> None:
    print(f"CPU: {cpu_model()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a finished run's folder (bench/out/NAME)")
    parser.add_argument("alphas", help="weights of the fine-tuned model, comma-separated")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens each text is cut to when encoded")
    parser.add_argument("--sets", default="val,val_users,medquad_test,consumer_questions", help="which sets to score")
    args = parser.parse_args()
    work, alphas, length = args.work, [float(a) for a in args.alphas.split(",")], args.max_seq_length
    if not SHARED.is_dir():
        sys.exit(f"benchmark data not found at {SHARED}: nothing measured")
    chosen = json.loads((work / "reports/train/metrics.json").read_text())["merge_alpha"]
    if chosen == 0:  # the saved model is the base model itself: the fine-tuned weights are not in it
        sys.exit(f"{work}: validation chose weight 0 (the base model): there is no fine-tuned model to sweep")
    sets = {"val": work / "data/prepared/val", "val_users": work / "data/prepared/val_users",
            "medquad_test": SHARED / "medquad/test", "consumer_questions": SHARED / "consumer_questions"}
    sets = {name: read_beir(sets[name]) for name in args.sets.split(",")}
    model = load_model("all-MiniLM-L6-v2", max_seq_length=length)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    saved = load_model(str(work / "models/finetuned"), max_seq_length=length).state_dict()
    for alpha in alphas:
        model.load_state_dict(merged_state(base, saved, alpha / chosen))
        row = {"alpha": alpha, "max_seq_length": length}
        for name, (corpus, queries, qrels) in sets.items():
            scores = summary(per_query_metrics(dense_run(model, corpus, queries, 100, 16)[0], qrels, CFG), CFG)
            row[name] = {"mrr@10": scores["mrr@10"], "ndcg@10": scores["ndcg@10"]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
