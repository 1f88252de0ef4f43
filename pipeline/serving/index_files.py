"""The index folder's contents: the FAISS index (exact, or IVF above a size), the model that encoded it (copied in,
so that the folder is self-contained) and its version record.

One folder is one version: the index stage builds it beside the served one and swaps it in by renames
(pipeline.files.atomic_dir), so a searcher never sees the model, vectors, BM25 and passages of two builds together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from pipeline.models import model_fingerprint, resolve_model

log = logging.getLogger("pipeline.index")


def build_index(vectors: np.ndarray, cfg: dict, queries: np.ndarray | None = None) -> tuple[faiss.Index, dict]:
    """Exact search (a flat index) up to index.approximate_above passages. Above it an inverted-file index (IVF:
    k-means cells, `nprobe` of them searched per query; a million build in under a minute on 2 CPU cores, where a
    graph such as HNSW takes far longer): at 100,000 passages a query takes 3.6 ms against 20.7 ms exact, at recall@10
    0.994 (bench/README.md). Its recall@10 against exact search is measured and recorded on `queries` (validation
    questions encoded as served: a passage as its own query sits at the centre of its cell, which flatters IVF),
    or, without them, on a sample of the passages, each one's own vector left out of both lists."""
    from faiss.contrib.evaluation import knn_intersection_measure

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
    if queries is not None and len(queries):
        sample = queries[rng.choice(len(queries), size=min(1000, len(queries)), replace=False)]
        recall = knn_intersection_measure(exact.search(sample, 10)[1], index.search(sample, 10)[1])
        measured_on = f"{len(sample)} validation questions"
    else:
        sample = rng.choice(len(vectors), size=min(1000, len(vectors)), replace=False)
        _, want = exact.search(vectors[sample], 11)
        _, got = index.search(vectors[sample], 11)
        recall = np.mean([len((set(w) - {q}) & (set(g) - {q})) / len(set(w) - {q})
                          for q, w, g in zip(sample, want, got)])
        measured_on = f"{len(sample)} passages as queries"
    log.info("IVF index (%d cells, nprobe %d): recall@10 %.4f against exact search on %s", nlist, index.nprobe,
             recall, measured_on)
    return index, {"kind": "ivf", "nlist": nlist, "nprobe": index.nprobe, "recall@10_vs_exact": round(float(recall), 4),
                   "recall_measured_on": measured_on}


MODEL_DIR = "model"  # the served model's copy inside the index folder


def copy_model(model_ref: str, out: Path) -> dict:
    """Copy the model that encodes into `out`/model and say how the index names it: the name as configured, the
    folder relative to the index (found wherever the index is moved), the sha256 that the searcher checks.

    A copy, not a path to models/finetuned: that folder changes when training re-runs, while the index's vectors
    are those of the model it was built with; inside the folder, the model swaps in with the vectors. DVC's cache is
    content-addressed, so the copy's files are the model's own objects: it costs no extra space in the cache or a
    remote, only the workspace copy (which a link-type DVC cache avoids too)."""
    source = Path(resolve_model(model_ref)).resolve()
    shutil.copytree(source, out / MODEL_DIR)  # files, never links: the index must not change with its source
    return {"name": model_ref, "path": MODEL_DIR, "sha256": model_fingerprint(out / MODEL_DIR)}


def version_record(out: Path, settings: dict, passages: int) -> dict:
    """Which build a folder holds: an id from what the searcher serves (the model's sha256 and the search settings
    in `settings`, the passages, the vectors), the build time and the size. The service names it in every answer
    and reloads when it changes; an identical rebuild keeps its id."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in ("passages.jsonl", "dense.faiss"):
        with open(out / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return {"id": digest.hexdigest()[:12], "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "passages": passages}
