"""IR metrics per query from pytrec_eval (trec_eval's own C code), their means under stable keys, and the pair
scores behind the score-distribution plot.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.retrieval import Run, ranked


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


def pair_scores(run: Run, qrels: dict, q_emb, c_emb, queries: dict, corpus: dict,
                section_of: dict[str, str] | None = None) -> pd.DataFrame:
    """Cosine of each query with its best relevant passage and with its hardest (top-ranked) non-relevant one
    (`section_of`: chunks of a relevant section are relevant)."""
    q_index = {q: i for i, q in enumerate(queries)}
    section = section_of or {}
    chunks: dict[str, list[int]] = {}
    for i, d in enumerate(corpus):
        chunks.setdefault(section.get(d, d), []).append(i)
    rows = []
    for qid, rel in qrels.items():
        qv = q_emb[q_index[qid]]
        positive = max(float(qv @ c_emb[i]) for d in rel for i in chunks[d])
        hardest = next((run[qid][d] for d in ranked(run[qid]) if section.get(d, d) not in rel), np.nan)
        rows.append({"query_id": qid, "positive": positive, "hardest_negative": hardest})
    return pd.DataFrame(rows)
