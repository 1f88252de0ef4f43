"""Stage 4, index: the served passages encoded by the served model into a FAISS index, with BM25 beside it.

Two stages of dvc.yaml run this module, one per model, so that a new training run re-encodes the knowledge base
with the new model only: the base model's index (for `compare` and `search --model base`) depends on nothing
training reads, and DVC keeps it, as it keeps the baselines.

Reads   params: model.base, encode.*, index.*, evaluate.rrf_k and evaluate.depth (the hybrid, as evaluated)
        files:  data/passages.jsonl (the passages evaluation scored, cut by the passages stage), models/finetuned/
                and reports/serve.json (finetuned: evaluate's decision, the base model when the fine-tuned one lost
                on a guard set, and the "no good match" threshold calibrated for the served model)
Writes  models/index/        (finetuned) or models/index_base/ (base):
            passages.jsonl   one passage a line, as in data/passages.jsonl
            dense.faiss      inner product of unit vectors (= cosine): exact, or IVF above index.approximate_above
            bm25/            bm25s index of the same texts, for the hybrid mode
            info.json        the model that encoded it (name, a path relative to this folder, sha256 of its files),
                             the encoding settings, which model was served and why, the no-match threshold, and
                             for an approximate index its recall@10 against exact search

    python -m pipeline.index            # the served model (the fine-tuned one, unless evaluate said otherwise)
    python -m pipeline.index base       # the base model
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import faiss
import numpy as np

from pipeline.common import (
    atomic_dir,
    load_model,
    load_params,
    local_model_path,
    model_fingerprint,
    passage_text,
    pick_precision,
    read_jsonl,
    repo_path,
    require_tracked,
    resolve_model,
    run_main,
    write_json,
)
from pipeline.retrieval import bm25_index, encode

log = logging.getLogger("pipeline.index")
MODEL_DIR = Path("models/finetuned")
SERVE = Path("reports/serve.json")
PASSAGES = Path("data/passages.jsonl")
INDEX_DIRS = {"finetuned": Path("models/index"), "base": Path("models/index_base")}


def build_index(vectors: np.ndarray, cfg: dict) -> tuple[faiss.Index, dict]:
    """Exact search (a flat index) up to index.approximate_above passages. Above it an inverted-file index (IVF:
    k-means cells, `nprobe` of them searched per query; a million build in under a minute on 2 CPU cores, where a
    graph such as HNSW takes far longer): at 100,000 passages a query takes 3.6 ms against 20.7 ms exact, at recall@10
    0.994 (bench/README.md). Its recall@10 against exact search is measured on a sample of the passages as queries,
    each one's own vector left out of both lists, and recorded."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    if len(vectors) <= int(cfg["approximate_above"]):
        return exact, {"kind": "exact"}
    nlist = int(cfg["ivf_nlist"] or 4 * np.sqrt(len(vectors)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    index.train(vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)])
    index.add(vectors)
    index.nprobe = int(cfg["nprobe"])
    sample = rng.choice(len(vectors), size=min(1000, len(vectors)), replace=False)
    _, want = exact.search(vectors[sample], 11)
    _, got = index.search(vectors[sample], 11)
    recall = np.mean([len((set(w) - {q}) & (set(g) - {q})) / len(set(w) - {q}) for q, w, g in zip(sample, want, got)])
    log.info("IVF index (%d cells, nprobe %d): recall@10 %.4f against exact search", nlist, index.nprobe, recall)
    return index, {"kind": "ivf", "nlist": nlist, "nprobe": index.nprobe, "recall@10_vs_exact": round(float(recall), 4)}


def model_identity(model_ref: str, target: Path) -> dict:
    """How the index names its model: the name as configured, its folder relative to the index's final place
    (found from anywhere the project folder is), and the sha256 that the searcher checks."""
    path = Path(resolve_model(model_ref)).resolve()
    relative = os.path.relpath(path, repo_path(target).resolve()) if repo_path(model_ref).exists() else None
    return {"name": model_ref, "path": relative, "sha256": model_fingerprint(path)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode the served passages into a FAISS index.")
    parser.add_argument("model", nargs="?", default="finetuned", choices=sorted(INDEX_DIRS))
    name = parser.parse_args(argv).model
    cfg, enc = load_params("index"), load_params("encode")
    base = load_params("model")["base"]
    hybrid = {k: int(v) for k, v in load_params("evaluate").items() if k in ("rrf_k", "depth")}
    require_tracked("index" if name == "finetuned" else "index_base", {"model.base": local_model_path(base)})
    served = {"model": "base", "reason": "the base model's own index"}
    if name == "finetuned":  # what evaluate decided: the base model when the fine-tuned one lost on a guard set
        served = json.loads(SERVE.read_text(encoding="utf-8"))
        if served["model"] == "base":
            log.warning("serving the base model, not the fine-tuned one: %s", served["reason"])
    model_ref = str(MODEL_DIR) if served["model"] == "finetuned" else base
    precision = pick_precision(enc["precision"], "encode.precision")
    passages = read_jsonl(PASSAGES)
    texts = [passage_text(p["title"], p["heading"], p["text"]) for p in passages]
    model = load_model(model_ref, max_seq_length=int(enc["max_seq_length"]))
    target = INDEX_DIRS[name]
    with atomic_dir(target) as out:
        start = time.perf_counter()
        vectors = encode(model, texts, int(enc["batch_size"]), precision).cpu().numpy()
        encode_seconds = time.perf_counter() - start
        index, kind = build_index(vectors, cfg)
        faiss.write_index(index, str(out / "dense.faiss"))
        bm25_index(texts).save(str(out / "bm25"))
        (out / "passages.jsonl").write_text(PASSAGES.read_text(encoding="utf-8"), encoding="utf-8")
        write_json(out / "info.json", {
            "model": model_identity(model_ref, target), "served": served["model"],
            "reason": served.get("reason", "no guard set lost"),
            "max_seq_length": int(enc["max_seq_length"]), "precision": precision, "hybrid": hybrid,
            "no_match_threshold": served.get("no_match", {}).get("threshold"),
            "passages": len(passages), "index": kind,
            "passages_per_second": round(len(texts) / encode_seconds, 1)})
    log.info("encoded %d passages with %s (%s, %.0f passages/s) into %s", len(texts), model_ref, precision,
             len(texts) / encode_seconds, target)


if __name__ == "__main__":
    run_main(main)
