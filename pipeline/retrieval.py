"""Retrieval and scoring shared by the baselines and evaluate stages.

A *run* is {query_id: {doc_id: score}} for the top `depth` passages of each query, the format of
trec_eval / BEIR. Metrics come from pytrec_eval (trec_eval's own C code), per query.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import beir_passage_texts, passage_text, read_beir

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
    # the processes costs seconds); those processes run the model in its own dtype, fp32
    gpus = torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(gpus)] if gpus > 1 and len(texts) >= MULTI_GPU_MIN_TEXTS else None
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16" and devices is None):
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True,
                               show_progress_bar=len(texts) > 500, device=devices)
    return vectors.float().to(model.device)


def top_k(q_emb, c_emb, query_ids: list[str], doc_ids: list[str], depth: int) -> Run:
    """Exact cosine top-`depth` per query (sentence-transformers' semantic_search)."""
    from sentence_transformers.util import semantic_search

    hits = semantic_search(q_emb, c_emb, top_k=min(depth, len(doc_ids)))
    return {q: {doc_ids[h["corpus_id"]]: float(h["score"]) for h in hs} for q, hs in zip(query_ids, hits)}


def dense_run(model, corpus: dict[str, str], queries: dict[str, str], depth: int, batch_size: int,
              precision: str = "fp32"):
    """Encode corpus and queries, retrieve; the embeddings come back too for reuse and pair statistics."""
    c_emb = encode(model, list(corpus.values()), batch_size, precision)
    q_emb = encode(model, list(queries.values()), batch_size, precision)
    return top_k(q_emb, c_emb, list(queries), list(corpus), depth), q_emb, c_emb


def held_out_sets(prepared: Path) -> dict[str, Path]:
    """The held-out sets prepare wrote, by name: the main test set first, then each of data.testsets."""
    named = sorted(p for p in (prepared / "testsets").glob("*") if p.is_dir())
    return {"test": prepared / "test", **{p.name: p for p in named}}


def scored_set(folder: Path, served: list[dict]):
    """A held-out set as it is scored: corpus, queries, qrels, and `section_of` (chunk id -> section id).

    When every passage its qrels judge is a section or answer the index serves, the corpus is the served passages
    themselves (data/passages.jsonl, chunked as served, the same text encoded) and `section_of` maps each chunk to
    the section it was cut from; otherwise the set's own corpus.jsonl, and None. A judged passage is served when a
    served section has its id (`kb/<stem>#<n>`, `faq/<row>`; `kb/<_id>` for a BEIR knowledge base) and every
    chunk cut from that section is part of the judged text: the same passage, not just the same name.
    """
    corpus, queries, qrels = read_beir(folder)
    chunks: dict[str, list[str]] = {}
    for p in served:
        chunks.setdefault(p["section"], []).append(p["text"])
    texts = beir_passage_texts(folder) if served else {}

    def served_id(doc: str) -> str | None:
        return next((s for s in (doc, f"kb/{doc}") if s in chunks and all(c in texts[doc] for c in chunks[s])), None)

    judged = {d for rel in qrels.values() for d in rel}
    mapping = {d: served_id(d) for d in judged}
    if served and all(mapping.values()):
        corpus = {p["id"]: passage_text(p["title"], p["heading"], p["text"]) for p in served}
        qrels = {q: {mapping[d]: g for d, g in rel.items()} for q, rel in qrels.items()}
        return corpus, queries, qrels, {p["id"]: p["section"] for p in served}
    return corpus, queries, qrels, None


def found_sections(run: Run, qrels: dict[str, dict[str, int]], section_of: dict[str, str] | None) -> Run:
    """A run over chunks as a run over the judged sections: a chunk of a section relevant to the query stands for
    that section where it first appears (a relevant passage is found when a retrieved chunk overlaps it); every
    other chunk keeps its own id, so ranks never move up and several chunks of one section are not merged into one.
    """
    if section_of is None:
        return run
    out: Run = {}
    for qid, scores in run.items():
        relevant, seen, mapped = qrels.get(qid, {}), set(), {}
        for doc in ranked(scores):
            section = section_of.get(doc, doc)
            key = section if section in relevant and section not in seen else doc
            seen.add(section)
            mapped[key] = scores[doc]
        out[qid] = mapped
    return out


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
    """BM25 top `depth` per query."""
    doc_ids = list(corpus)
    retriever = bm25_index(list(corpus.values()))
    docs, scores = retriever.retrieve(bm25_tokens(queries.values()), k=min(depth, len(doc_ids)), show_progress=False)
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


def no_match_samples(run: Run, qrels: dict[str, dict[str, int]], section_of: dict[str, str] | None = None):
    """Top scores per query with its answers in the corpus, and with every document holding one taken out (each
    chunk of a section of `kb/<doc>#<n>`, each judged answer): the second is what the index returns for a question
    about a subject it holds nothing on. Test sets judge answerable questions only; taking the documents out is
    how the unanswerable case is had from them."""
    def document(doc_id: str) -> str:
        return (section_of or {}).get(doc_id, doc_id).split("#")[0]

    answered, unanswered = [], []
    for qid, relevant in qrels.items():
        scores = run.get(qid, {})
        order = ranked(scores)
        if not order:
            continue
        answered.append(scores[order[0]])
        absent = {document(d) for d in relevant}
        rest = [scores[d] for d in order if document(d) not in absent]
        if rest:
            unanswered.append(rest[0])
    return np.array(answered, dtype=float), np.array(unanswered, dtype=float)


def no_match_threshold(answered: np.ndarray, unanswered: np.ndarray, precision: float) -> float:
    """The highest threshold t such that "top score < t" is right (no answer held) at least `precision` of the
    times it fires: as many no-answer questions flagged as that precision allows. 0.0 when no t reaches it."""
    scores = np.concatenate([answered, unanswered])
    labels = np.concatenate([np.zeros(len(answered)), np.ones(len(unanswered))])
    order = np.argsort(scores, kind="stable")
    s, hit = scores[order], labels[order]
    cumulative = np.cumsum(hit) / np.arange(1, len(s) + 1)  # precision when the i+1 lowest top scores are flagged
    ok = np.flatnonzero((cumulative >= precision) & (np.r_[s[1:], np.inf] > s))  # cut between distinct scores
    if not len(ok):
        return 0.0
    i = ok.max()
    return float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i] + 1e-6)


def flag_quality(answered: np.ndarray, unanswered: np.ndarray, threshold: float) -> dict[str, float]:
    """precision: share of flagged questions that had no answer; recall: share of no-answer questions flagged;
    false_flags: share of answerable questions flagged."""
    flagged_no, flagged_yes = int((unanswered < threshold).sum()), int((answered < threshold).sum())
    return {"precision": round(flagged_no / max(1, flagged_no + flagged_yes), 4),
            "recall": round(flagged_no / max(1, len(unanswered)), 4),
            "false_flags": round(flagged_yes / max(1, len(answered)), 4)}
