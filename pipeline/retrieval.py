"""Retrieval primitives shared by evaluation, the index and the searcher: encoding, exact dense top-k, BM25,
reciprocal rank fusion, the order of a run.

A *run* is {query_id: {doc_id: score}} for the top `depth` passages of each query, the format of trec_eval / BEIR.
"""

from __future__ import annotations

import json
from pathlib import Path

Run = dict[str, dict[str, float]]


MULTI_GPU_MIN_TEXTS = 20_000


def encode(model, texts: list[str], batch_size: int, precision: str = "fp32"):
    """Unit-length embeddings (cosine = dot product), as a float32 tensor on the model's device.

    bf16: autocast, matrix products in bf16 and the vectors kept as float32; on MedQuAD's 5,000 passages it encodes
    1.9x faster on a CPU with AVX512-BF16, the same test scores to four decimals (bench/README.md). Evaluation and
    the index take the same setting (encode.precision), so the index serves what was scored.
    """
    import torch

    # several GPUs: sentence-transformers' multi-process encoding, one process per GPU, for a large corpus (starting
    # the processes costs seconds). Those processes run the model in its own dtype, outside this autocast: so fp32
    # only; bf16 stays on one GPU under autocast, as every other encode, so the vectors are what the setting says
    gpus = torch.cuda.device_count()
    devices = ([f"cuda:{i}" for i in range(gpus)]
               if gpus > 1 and len(texts) >= MULTI_GPU_MIN_TEXTS and precision == "fp32" else None)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True,
                               show_progress_bar=len(texts) > 500, device=devices)
    return vectors.float().to(model.device)


def top_k(q_emb, c_emb, query_ids: list[str], doc_ids: list[str], depth: int) -> Run:
    """Exact cosine top-`depth` per query (sentence-transformers' semantic_search)."""
    from sentence_transformers.util import semantic_search

    hits = semantic_search(q_emb, c_emb, top_k=min(depth, len(doc_ids)))
    return {q: {doc_ids[h["corpus_id"]]: float(h["score"]) for h in hs} for q, hs in zip(query_ids, hits)}


def dense_run(model, corpus: dict[str, str], queries: dict[str, str], depth: int, batch_size: int,
              precision: str = "fp32", encoder=None):
    """Encode corpus and queries, retrieve; the embeddings come back too for reuse and pair statistics. `encoder`:
    encode (the default) or a stage's pipeline.embeddings.encode_cached, with encode's arguments."""
    encoder = encoder or encode
    c_emb = encoder(model, list(corpus.values()), batch_size, precision)
    q_emb = encoder(model, list(queries.values()), batch_size, precision)
    return top_k(q_emb, c_emb, list(queries), list(corpus), depth), q_emb, c_emb


def bm25_tokens(texts: list[str]):
    """BM25's view of texts (bm25s, English stopwords and Snowball stemmer): the same for evaluation, the index and
    the searcher's queries."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)


def bm25_index(texts: list[str]):
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25_tokens(texts), show_progress=False)
    return retriever


def bm25_run(corpus: dict[str, str], queries: dict[str, str], depth: int) -> Run:
    """BM25 top `depth` per query, hits only: bm25s fills its k with passages scoring 0 (no word in common), which
    would otherwise enter the hybrid's fusion with a rank and a share of the score."""
    doc_ids = list(corpus)
    retriever = bm25_index(list(corpus.values()))
    docs, scores = retriever.retrieve(bm25_tokens(queries.values()), k=min(depth, len(doc_ids)), show_progress=False)
    return {qid: {doc_ids[d]: float(s) for d, s in zip(ds, ss) if s > 0} for qid, ds, ss in zip(queries, docs, scores)}


def rrf(runs: list[Run], k: int, depth: int) -> Run:
    """Reciprocal rank fusion (Cormack et al. 2009): sum of 1 / (k + rank). Three lines; no library needed."""
    fused: Run = {}
    for qid in runs[0]:
        scores: dict[str, float] = {}
        for run in runs:
            for rank, doc in enumerate(ranked(run.get(qid, {})), start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        fused[qid] = dict(sorted(scores.items(), key=lambda x: -x[1])[:depth])
    return fused


def ranked(scores: dict[str, float]) -> list[str]:
    """Doc ids best first; ties broken by doc id so every consumer sees the same order."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (-x[1], x[0]))]


def save_run(path: Path, run: Run) -> None:
    path.write_text(json.dumps(run), encoding="utf-8")


def load_run(path: Path) -> Run:
    return json.loads(Path(path).read_text(encoding="utf-8"))
