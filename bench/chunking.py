"""Benchmark: how the knowledge base is cut (passages.strategy) on MedQuAD, whose answers run long.

    python bench/chunking.py [--model bench/out/final/models/finetuned] [--precision bf16]

The knowledge base is MedQuAD's test corpus (../shared/bench/medquad/test/corpus.jsonl, 5,000 answers: 3,423 (68%)
are longer than 128 tokens and the encoder reads only their start); the questions are its 401 held-out test questions,
whose answers live in it. Each strategy is cut by pipeline/data/chunking.py exactly as the passages stage cuts, scored
as evaluate scores the served passages (a judged answer is found where a chunk of it is retrieved), for the base
model and the fine-tuned one (the MedQuAD run of bench/run_medquad.py: `--name final`). The bundled data's table
comes from `dvc exp run -S passages.strategy=...` (README, "Chunking").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_model  # noqa: E402
from pipeline.data.chunking import cut  # noqa: E402
from pipeline.data.kb import read_kb  # noqa: E402
from pipeline.eval.heldout import found_sections, scored_set  # noqa: E402
from pipeline.eval.metrics import per_query_metrics, summary  # noqa: E402
from pipeline.models import load_model, resolve_model  # noqa: E402
from pipeline.params import setup_logging  # noqa: E402
from pipeline.retrieval import dense_run  # noqa: E402

MEDQUAD = ROOT.parent / "shared" / "bench" / "medquad"
STRATEGIES = [("section", None, 0), ("paragraph", None, 0), ("window", None, 32), ("window", 64, 16)]
CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 100, "recall_k": [1, 10], "depth": 100}


def main() -> None:
    print(f"CPU: {cpu_model()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "bench/out/final/models/finetuned"))
    parser.add_argument("--base", default="all-MiniLM-L6-v2")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()
    setup_logging()
    if not MEDQUAD.is_dir():
        sys.exit(f"{MEDQUAD} not found: this benchmark needs MedQuAD (../shared/bench, beside the checkout)")
    models = {"base": args.base}
    if Path(args.model).is_dir():
        models["fine-tuned"] = args.model
    else:
        print(f"{args.model} not found (run `python bench/run_medquad.py --name final`): the base model only")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.base))
    sections = read_kb(str(MEDQUAD / "test" / "corpus.jsonl"))
    long = sum(len(tokenizer(s["text"], add_special_tokens=False)["input_ids"]) > args.max_seq_length - 2 for s in sections)
    print(f"MedQuAD test corpus: {len(sections)} answers, {long} ({long / len(sections):.0%}) longer than "
          f"{args.max_seq_length - 2} tokens; {args.precision} encoding at {args.max_seq_length} tokens")
    rows = []
    for name, ref in models.items():
        model = load_model(ref, max_seq_length=args.max_seq_length)
        for strategy, window, overlap in STRATEGIES:
            cfg = {"strategy": strategy, "window_tokens": window, "overlap_tokens": overlap}
            passages = cut(sections, cfg, tokenizer, args.max_seq_length)
            corpus, queries, qrels, section_of = scored_set(MEDQUAD / "test", passages)
            assert section_of is not None, "the test set's answers should be the served sections"
            start = time.perf_counter()
            run, _, _ = dense_run(model, corpus, queries, CFG["depth"], 64, args.precision)
            seconds = time.perf_counter() - start
            scores = summary(per_query_metrics(found_sections(run, qrels, section_of), qrels, CFG), CFG)
            label = strategy if strategy != "window" else f"window {window or 'max'}/{overlap}"
            rows.append((name, label, len(passages), scores, seconds))
            print(f"{name:10} {label:15} {len(passages):6} passages  MRR@10 {scores['mrr@10']:.4f}  "
                  f"NDCG@10 {scores['ndcg@10']:.4f}  R@1 {scores['recall@1']:.4f}  R@10 {scores['recall@10']:.4f}  "
                  f"({seconds:.0f} s)", flush=True)
    print("\n| model | strategy | passages | MRR@10 | NDCG@10 | recall@1 | recall@10 | encode s |\n|---|---|---|---|---|---|---|---|")
    for name, label, n, s, sec in rows:
        print(f"| {name} | {label} | {n} | {s['mrr@10']:.4f} | {s['ndcg@10']:.4f} | {s['recall@1']:.4f} | "
              f"{s['recall@10']:.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
