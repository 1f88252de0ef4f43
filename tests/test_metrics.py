"""IR metrics (pytrec_eval) checked against values worked out by hand; fusion; paired significance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.eval.metrics import first_relevant_rank, per_query_metrics, summary
from pipeline.eval.paired_test import paired_test
from pipeline.retrieval import rrf

CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 100, "recall_k": [1, 2, 3], "depth": 4}
QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d4": 1}}
RUN = {"q1": {"d2": 0.9, "d1": 0.5, "d3": 0.1, "d4": 0.05},   # relevant at ranks 2 and 3
       "q2": {"d1": 0.8, "d2": 0.7, "d4": 0.6, "d3": 0.1}}    # relevant at rank 3


def test_metrics_match_hand_computed_values():
    m = per_query_metrics(RUN, QRELS, CFG)
    # q1: first relevant at rank 2 -> RR 1/2
    assert m.loc["q1", "mrr@10"] == pytest.approx(0.5)
    # q1: DCG = 1/log2(3) + 1/log2(4); ideal DCG = 1 + 1/log2(3)
    assert m.loc["q1", "ndcg@10"] == pytest.approx((1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)))
    # q1: AP = (1/2 + 2/3) / 2
    assert m.loc["q1", "map@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert [m.loc["q1", f"recall@{k}"] for k in (1, 2, 3)] == [0.0, 0.5, 1.0]
    assert m.loc["q2", "mrr@10"] == pytest.approx(1 / 3)
    assert summary(m, CFG)["mrr@10"] == pytest.approx(round((0.5 + 1 / 3) / 2, 4))


def test_mrr_cutoff_is_exact():
    m = per_query_metrics(RUN, QRELS, dict(CFG, mrr_k=2))
    assert m.loc["q1", "mrr@2"] == pytest.approx(0.5)   # rank 2 is inside the cut-off
    assert m.loc["q2", "mrr@2"] == 0.0                  # rank 3 is not


def test_ties_are_ordered_the_same_way_everywhere():
    tied = {"q2": {"d4": 0.5, "d1": 0.5}}               # a tie: doc id decides, d1 before d4
    assert first_relevant_rank(tied, {"q2": {"d4": 1}}) == {"q2": 2}
    assert per_query_metrics(tied, {"q2": {"d4": 1}}, dict(CFG, depth=2)).loc["q2", "mrr@10"] == 0.5


def test_first_relevant_rank_missing_is_nan():
    ranks = first_relevant_rank({"q1": {"d2": 1.0}}, {"q1": {"d1": 1}})
    assert math.isnan(ranks["q1"])


def test_reciprocal_rank_fusion_by_hand():
    a = {"q": {"d1": 2.0, "d2": 1.0}}
    b = {"q": {"d2": 0.9, "d3": 0.8}}
    fused = rrf([a, b], k=60, depth=10)["q"]
    assert fused == pytest.approx({"d2": 1 / 62 + 1 / 61, "d1": 1 / 61, "d3": 1 / 62})
    assert list(fused) == ["d2", "d1", "d3"]


def test_paired_test_is_seeded_and_sensible():
    rng = np.random.default_rng(0)
    base = pd.Series(rng.uniform(0, 1, 200))
    better = (base + 0.1 + rng.normal(0, 0.05, 200)).clip(0, 1)
    t = paired_test(better, base, samples=2000, seed=0)
    assert t == paired_test(better, base, samples=2000, seed=0)
    assert t["ci_low"] > 0 and t["p_value"] < 0.01 and t["ci_low"] <= t["delta"] <= t["ci_high"]
    same = paired_test(base, base, samples=2000, seed=0)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    # no real difference: mean-zero noise, symmetric, so the interval straddles 0 and the test does not reject
    noise = base + np.tile([0.01, -0.01], 100)
    flat = paired_test(noise, base, samples=2000, seed=0)
    assert flat["delta"] == 0.0 and flat["ci_low"] < 0 < flat["ci_high"] and flat["p_value"] > 0.5
    worse = paired_test(base - 0.05, base, samples=2000, seed=0)
    assert worse["ci_high"] < 0 and worse["p_value"] < 0.01


def test_per_query_reciprocal_rank_has_the_mrr_cutoff():
    """per_query.csv's rr@10 columns average to metrics.json's mrr@10: a first relevant passage at rank 15 counts 0."""
    from pipeline.eval.metrics import reciprocal_rank_at_k

    docs = [f"d{i:02d}" for i in range(1, 21)]
    run = {q: {d: 1.0 - i / 100 for i, d in enumerate(docs)} for q in ("qa", "qb", "qc", "qd")}
    qrels = {"qa": {"d01": 1}, "qb": {"d15": 1}, "qc": {"d10": 1, "d03": 1}, "qd": {"d99": 1}}  # ranks 1, 15, 3, none
    cfg = dict(CFG, depth=20)
    rr = reciprocal_rank_at_k(run, qrels, cfg["mrr_k"])
    assert rr == pytest.approx({"qa": 1.0, "qb": 0.0, "qc": 1 / 3, "qd": 0.0})
    assert np.mean(list(rr.values())) == pytest.approx(per_query_metrics(run, qrels, cfg)["mrr@10"].mean())
    assert reciprocal_rank_at_k(run, qrels, 20)["qb"] == pytest.approx(1 / 15)


def test_questions_sharing_a_topic_are_resampled_together():
    """20 questions on each of 10 topics, the gain set by the topic: resampling questions as if independent gives
    an interval far too narrow; resampling topics gives the honest one."""
    rng = np.random.default_rng(1)
    topic_gain = rng.normal(0.05, 0.1, 10)
    topics = pd.Series([f"t{i // 20}" for i in range(200)], index=[f"q{i}" for i in range(200)])
    base = pd.Series(rng.uniform(0.3, 0.7, 200), index=topics.index)
    tuned = base + np.repeat(topic_gain, 20) + rng.normal(0, 0.01, 200)
    by_question = paired_test(tuned, base, samples=2000, seed=0)
    by_topic = paired_test(tuned, base, samples=2000, seed=0, topics=topics)
    assert by_topic["delta"] == by_question["delta"]
    width = lambda t: t["ci_high"] - t["ci_low"]
    assert width(by_topic) > 3 * width(by_question)
    assert by_topic["p_value"] > by_question["p_value"]


def test_bm25_keeps_only_passages_sharing_a_word_with_the_query():
    """bm25s fills its k with zero-score passages; those are no hits and must not enter the hybrid's fusion."""
    from pipeline.retrieval import bm25_run

    corpus = {"a": "parvovirus in puppies", "b": "feline diabetes and insulin", "c": "horse hoof care"}
    run = bm25_run(corpus, {"q": "parvovirus vaccine for puppies"}, depth=3)
    assert list(run["q"]) == ["a"] and run["q"]["a"] > 0


def test_ndcg_with_graded_judgements_by_hand():
    """Grades count as gains (trec_eval: gain = grade, discount log2(rank + 1)): a 2 found below a 1 scores less
    than the ideal order, and a grade-1 passage alone is not a perfect score when a 2 exists."""
    run = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}
    qrels = {"q": {"d1": 1, "d3": 2}}
    got = per_query_metrics(run, qrels, CFG).loc["q", "ndcg@10"]
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert got == pytest.approx(dcg / ideal, abs=1e-4)
