"""Benchmark: what should the search do with a long, messy message? Query-side strategies, scored on real users'
questions in two domains: ../shared/bench/consumer_questions (real consumer health messages, when ../shared exists)
and the bundled pet_owners test set (on the passages the index serves, as evaluate scores it).

    python bench/long_messages.py [--model all-MiniLM-L6-v2] [--model models/finetuned]

Strategies, each a ranking of the same passages:
- whole:          the message encoded as it is (what the pipeline does; the encoder reads its first 128 tokens);
- best sentence:  each sentence (and a subject line) encoded apart; a passage scores its best cosine with any of them;
- whole + best:   a passage scores the higher of the two above;
- sentence mean:  the mean of the sentence vectors, normalised;
- hybrid:         whole-message dense and BM25 fused by reciprocal rank (k = 60), as evaluate's hybrid.
Prints NDCG@10 and MRR@10 per strategy, with the CPU model and the query lengths.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from pipeline.data.readers import read_beir  # noqa: E402
from pipeline.eval.heldout import found_sections, scored_set  # noqa: E402
from pipeline.eval.metrics import per_query_metrics, summary  # noqa: E402
from pipeline.files import read_jsonl  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.retrieval import bm25_run, encode, rrf, top_k  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONSUMER = ROOT.parent / "shared" / "bench" / "consumer_questions"
CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 100, "recall_k": [10], "depth": 100}


def sentences(message: str) -> list[str]:
    """A subject line and each sentence, at least 3 words each (fragments carry no question)."""
    text = re.sub(r"\b(SUBJECT|MESSAGE|Subject|Message):", "\n", message)
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text)]
    kept = [p for p in parts if len(p.split()) >= 3]
    return kept or [message]


def strategies(model, corpus: dict, queries: dict, depth: int) -> dict:
    doc_ids, query_ids = list(corpus), list(queries)
    c_emb = encode(model, list(corpus.values()), 32)
    whole = encode(model, list(queries.values()), 32)
    pieces = [sentences(q) for q in queries.values()]
    flat = encode(model, [s for p in pieces for s in p], 32)
    owner = torch.tensor([i for i, p in enumerate(pieces) for _ in p])
    by_sentence = flat @ c_emb.T
    best = torch.full((len(queries), len(corpus)), -2.0)
    best = best.index_reduce_(0, owner, by_sentence.cpu(), "amax", include_self=True)
    mean = torch.zeros(len(queries), flat.shape[1]).index_add_(0, owner, flat.cpu())
    mean = torch.nn.functional.normalize(mean, dim=1)
    whole_scores = (whole @ c_emb.T).cpu()

    def run_of(scores):
        values, idx = scores.topk(min(depth, len(doc_ids)), dim=1)
        return {q: {doc_ids[i]: float(v) for v, i in zip(vs, ix)} for q, vs, ix in zip(query_ids, values.tolist(), idx.tolist())}

    runs = {"whole": top_k(whole, c_emb, query_ids, doc_ids, depth), "best sentence": run_of(best),
            "whole + best": run_of(torch.maximum(best, whole_scores)),
            "sentence mean": top_k(mean.to(c_emb.device), c_emb, query_ids, doc_ids, depth)}
    runs["hybrid"] = rrf([bm25_run(corpus, queries, depth), runs["whole"]], 60, depth)
    return runs, np.mean([len(p) for p in pieces])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="model name or folder (repeatable)")
    args = parser.parse_args()
    sets = {}
    if CONSUMER.is_dir():
        corpus, queries, qrels = read_beir(CONSUMER)
        sets["consumer_questions"] = (corpus, queries, qrels, None)
    else:
        print(f"{CONSUMER} not found (../shared beside the checkout): consumer_questions skipped")
    served = [p for p in read_jsonl(ROOT / "data/passages.jsonl")] if (ROOT / "data/passages.jsonl").exists() else []
    sets["pet_owners"] = scored_set(ROOT / "data/raw/testsets/pet_owners", served)
    print(f"CPU: {cpu_model()}")
    for name in args.model or ["all-MiniLM-L6-v2"]:
        model = load_model(name, max_seq_length=128)
        for set_name, (corpus, queries, qrels, section_of) in sets.items():
            runs, pieces = strategies(model, corpus, queries, CFG["depth"])
            words = np.median([len(q.split()) for q in queries.values()])
            print(f"\n{name} on {set_name}: {len(queries)} queries (median {words:.0f} words, {pieces:.1f} sentences), "
                  f"{len(corpus)} passages")
            print("| strategy | NDCG@10 | MRR@10 |\n|---|---|---|")
            for label, run in runs.items():
                s = summary(per_query_metrics(found_sections(run, qrels, section_of), qrels, CFG), CFG)
                print(f"| {label} | {s['ndcg@10']:.4f} | {s['mrr@10']:.4f} |")


if __name__ == "__main__":
    main()
