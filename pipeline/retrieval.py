"""Retrieval and scoring shared by the baselines and evaluate stages.

A *run* is {query_id: {doc_id: score}} for the top `depth` passages of each query, the format of
trec_eval / BEIR. Metrics come from pytrec_eval (trec_eval's own C code), per query.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import read_beir

Run = dict[str, dict[str, float]]


def encode(model, texts: list[str], batch_size: int):
    """Unit-length embeddings (cosine = dot product), as a tensor on the model's device."""
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True,
                        show_progress_bar=len(texts) > 500)


def top_k(q_emb, c_emb, query_ids: list[str], doc_ids: list[str], depth: int) -> Run:
    """Exact cosine top-`depth` per query (sentence-transformers' semantic_search)."""
    from sentence_transformers.util import semantic_search

    hits = semantic_search(q_emb, c_emb, top_k=min(depth, len(doc_ids)))
    return {q: {doc_ids[h["corpus_id"]]: float(h["score"]) for h in hs} for q, hs in zip(query_ids, hits)}


def dense_run(model, corpus: dict[str, str], queries: dict[str, str], depth: int, batch_size: int):
    """Encode corpus and queries, retrieve; the embeddings come back too for reuse and pair statistics."""
    c_emb, q_emb = encode(model, list(corpus.values()), batch_size), encode(model, list(queries.values()), batch_size)
    return top_k(q_emb, c_emb, list(queries), list(corpus), depth), q_emb, c_emb


def held_out_sets(prepared: Path) -> dict[str, Path]:
    """The held-out sets prepare wrote, by name: the main test set first, then each of data.testsets."""
    named = sorted(p for p in (prepared / "testsets").glob("*") if p.is_dir())
    return {"test": prepared / "test", **{p.name: p for p in named}}


def bm25_run(corpus: dict[str, str], queries: dict[str, str], depth: int) -> Run:
    """BM25 (bm25s, English stopwords and Snowball stemmer)."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus.values()), stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    tokens = bm25s.tokenize(list(queries.values()), stopwords="en", stemmer=stemmer, show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=min(depth, len(doc_ids)), show_progress=False)
    return {qid: {doc_ids[d]: float(s) for d, s in zip(ds, ss)} for qid, ds, ss in zip(queries, docs, scores)}


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


def first_relevant_rank(run: Run, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """1-based rank of the first relevant passage per query; NaN when none is in the run."""
    out = {}
    for qid, rel in qrels.items():
        order = ranked(run.get(qid, {}))
        out[qid] = next((i for i, d in enumerate(order, start=1) if d in rel), float("nan"))
    return out


def reciprocal_rank_at_k(run: Run, qrels: dict[str, dict[str, int]], k: int) -> dict[str, float]:
    """1 / rank of the first relevant passage per query, 0 when it is below rank k or missing: the per-query term
    of MRR@k, so its mean is per_query_metrics' mrr@k."""
    return {q: 1.0 / r if r <= k else 0.0 for q, r in first_relevant_rank(run, qrels).items()}  # NaN <= k is False


def per_query_metrics(run: Run, qrels: dict[str, dict[str, int]], cfg: dict) -> pd.DataFrame:
    """One row per query: mrr@k, ndcg@k, map@k and recall@k under the keys reported in metrics.json.

    Scores are replaced by rank-based ones first, so trec_eval orders ties exactly as `ranked` does and the
    MRR@k cut-off (a run truncated to k, since trec_eval's recip_rank has no cut-off) is exact.
    """
    import pytrec_eval

    depth = int(cfg["depth"])
    by_rank = {q: {d: float(depth - i) for i, d in enumerate(ranked(run.get(q, {}))[:depth])} for q in qrels}
    mrr_k, ndcg_k, map_k, recall_k = int(cfg["mrr_k"]), int(cfg["ndcg_k"]), int(cfg["map_k"]), list(cfg["recall_k"])
    curve = list(range(1, depth + 1))
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {f"ndcg_cut.{ndcg_k}", f"map_cut.{map_k}", "recall." + ",".join(map(str, sorted(set(curve + recall_k))))})
    full = evaluator.evaluate(by_rank)
    truncated = {q: {d: s for d, s in docs.items() if s > depth - mrr_k} for q, docs in by_rank.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncated)
    rows = []
    for q in qrels:
        m = full.get(q, {})
        row = {"query_id": q, f"mrr@{mrr_k}": rr.get(q, {}).get("recip_rank", 0.0),
               f"ndcg@{ndcg_k}": m.get(f"ndcg_cut_{ndcg_k}", 0.0), f"map@{map_k}": m.get(f"map_cut_{map_k}", 0.0)}
        row.update({f"recall@{k}": m.get(f"recall_{k}", 0.0) for k in sorted(set(curve + recall_k))})
        rows.append(row)
    return pd.DataFrame(rows).set_index("query_id")


def summary(per_query: pd.DataFrame, cfg: dict) -> dict[str, float]:
    """The metrics.json block: means of the stable keys, rounded."""
    keys = [f"mrr@{cfg['mrr_k']}", f"ndcg@{cfg['ndcg_k']}", f"map@{cfg['map_k']}"]
    keys += [f"recall@{k}" for k in cfg["recall_k"]]
    return {k: round(float(per_query[k].mean()), 4) for k in keys}


def pair_scores(run: Run, qrels: dict, q_emb, c_emb, queries: dict, corpus: dict) -> pd.DataFrame:
    """Cosine of each query with its best relevant passage and with its hardest (top-ranked) non-relevant one."""
    q_index = {q: i for i, q in enumerate(queries)}
    d_index = {d: i for i, d in enumerate(corpus)}
    rows = []
    for qid, rel in qrels.items():
        qv = q_emb[q_index[qid]]
        positive = max(float(qv @ c_emb[d_index[d]]) for d in rel)
        hardest = next((run[qid][d] for d in ranked(run[qid]) if d not in rel), np.nan)
        rows.append({"query_id": qid, "positive": positive, "hardest_negative": hardest})
    return pd.DataFrame(rows)


def save_run(path: Path, run: Run) -> None:
    path.write_text(json.dumps(run), encoding="utf-8")


def load_run(path: Path) -> Run:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def validation_evaluator(folder: Path, name: str, batch_size: int):
    """A sentence-transformers evaluator (for the trainer's checks) that scores a BEIR folder with this module's
    retrieval and trec_eval metrics: the same numbers the evaluate stage reports.

    Written here rather than taken from InformationRetrievalEvaluator because that one takes binary relevance, and
    the users' validation questions are graded (pipeline/user_questions.py).
    """
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    corpus, queries, qrels = read_beir(folder)
    cfg = {"mrr_k": 10, "ndcg_k": 10, "map_k": 10, "recall_k": [10], "depth": 10}

    class GradedRetrievalEvaluator(BaseEvaluator):
        def __init__(self):
            super().__init__()
            self.name, self.primary_metric = name, f"{name}_cosine_ndcg@10"

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            run, _, _ = dense_run(model, corpus, queries, cfg["depth"], batch_size)
            scores = summary(per_query_metrics(run, qrels, cfg), cfg)
            metrics = {f"{name}_cosine_{k}": v for k, v in scores.items() if k != "map@10"}
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return GradedRetrievalEvaluator()
