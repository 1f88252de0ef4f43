"""Stage 3b, evaluate: score the fine-tuned model and a hybrid against the baselines, with intervals.

Reads   params: evaluate.*
        files:  data/prepared/{test,val,val_noisy}/, models/finetuned/, reports/baselines/, reports/train/
Writes  reports/metrics.json     {"base", "finetuned", "bm25", "hybrid", "base_val", "finetuned_val", "base_noisy",
                                  "finetuned_noisy"}: mrr@10, ndcg@10, map@100, recall@1/5/10/20 each;
                                 "finetuned_vs_base", "finetuned_vs_bm25", "finetuned_noisy_vs_base_noisy":
                                 paired delta, 95% bootstrap interval and randomisation-test p-value
        reports/per_query.csv    every test query: rank of its first relevant passage and reciprocal rank per system
                                 (rr@{mrr_k}_<system>: 0 below rank mrr_k, so each column averages to mrr@{mrr_k})
        reports/plots/           recall@k curve (CSV for `dvc plots`, PNG), rank change, score distributions,
                                 training curves (PNG)
        reports/report.md        the one page to show a colleague

    python -m pipeline.evaluate
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from pipeline import report
from pipeline.common import atomic_dir, atomic_file, load_model, load_params, read_beir, run_main, write_json
from pipeline.retrieval import (
    dense_run,
    first_relevant_rank,
    load_run,
    pair_scores,
    per_query_metrics,
    ranked,
    reciprocal_rank_at_k,
    rrf,
    summary,
    validation_runs,
)

log = logging.getLogger("pipeline.evaluate")
PREPARED = Path("data/prepared")
MODEL_DIR = Path("models/finetuned")
BASELINES = Path("reports/baselines")
TRAIN_LOGS = Path("reports/train")
METRICS = Path("reports/metrics.json")
PER_QUERY = Path("reports/per_query.csv")
PLOTS = Path("reports/plots")
REPORT = Path("reports/report.md")
SYSTEMS = ["base", "finetuned", "bm25", "hybrid"]


def paired_test(a: pd.Series, b: pd.Series, samples: int, seed: int) -> dict[str, float]:
    """Mean of a - b over the same queries, its 95% paired-bootstrap interval and a two-sided randomisation p-value."""
    diff = (a - b).to_numpy(dtype=float)
    if np.allclose(diff, 0):
        return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    boot = scipy_stats.bootstrap((diff,), np.mean, n_resamples=samples, confidence_level=0.95,
                                 method="percentile", rng=np.random.default_rng(seed))
    # paired randomisation test: under H0 each query's two scores are exchangeable (random sign flips)
    perm = scipy_stats.permutation_test((a.to_numpy(float), b.to_numpy(float)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                        permutation_type="samples", n_resamples=samples, alternative="two-sided",
                                        vectorized=True, rng=np.random.default_rng(seed))
    return {"delta": round(float(diff.mean()), 4), "ci_low": round(float(boot.confidence_interval.low), 4),
            "ci_high": round(float(boot.confidence_interval.high), 4), "p_value": round(float(perm.pvalue), 4)}


def main() -> None:
    cfg = load_params("evaluate")
    depth, batch_size, seed = int(cfg["depth"]), int(cfg["batch_size"]), int(cfg["seed"])
    headline = [f"mrr@{cfg['mrr_k']}", f"ndcg@{cfg['ndcg_k']}"]
    model = load_model(str(MODEL_DIR), max_seq_length=int(cfg["max_seq_length"]))

    # 1. Test set: fine-tuned run, the baselines' runs, and the hybrid (BM25 + fine-tuned, RRF)
    corpus, queries, qrels = read_beir(PREPARED / "test")
    runs = {"base": load_run(BASELINES / "test_base.json"), "bm25": load_run(BASELINES / "test_bm25.json")}
    runs["finetuned"], q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size)
    runs["hybrid"] = rrf([runs["bm25"], runs["finetuned"]], int(cfg["rrf_k"]), depth)
    scores = {name: per_query_metrics(runs[name], qrels, cfg) for name in SYSTEMS}
    pairs = {"base": pd.read_csv(BASELINES / "test_base_pair_scores.csv"),
             "finetuned": pair_scores(runs["finetuned"], qrels, q_emb, c_emb, queries, corpus)}

    # 2. Validation questions, clean and noisy (written the way users type): does the gain survive?
    val_run, noisy_run, val_qrels = validation_runs(model, PREPARED, depth, batch_size)
    scores["base_val"] = per_query_metrics(load_run(BASELINES / "val_base.json"), val_qrels, cfg)
    scores["finetuned_val"] = per_query_metrics(val_run, val_qrels, cfg)
    scores["base_noisy"] = per_query_metrics(load_run(BASELINES / "val_noisy_base.json"), val_qrels, cfg)
    scores["finetuned_noisy"] = per_query_metrics(noisy_run, val_qrels, cfg)

    # 3. Metrics and paired significance
    metrics = {name: summary(df, cfg) for name, df in scores.items()}
    samples = int(cfg["bootstrap_samples"])
    for a, b in [("finetuned", "base"), ("finetuned", "bm25"), ("finetuned_noisy", "base_noisy")]:
        metrics[f"{a}_vs_{b}"] = {m: paired_test(scores[a][m], scores[b][m], samples, seed) for m in headline}
    for name in ["base", "finetuned", "bm25", "hybrid", "base_noisy", "finetuned_noisy"]:
        log.info("%-16s %s", name, "  ".join(f"{k} {v:.4f}" for k, v in metrics[name].items()))

    # 4. Per-query evidence
    ranks = {name: first_relevant_rank(runs[name], qrels) for name in SYSTEMS}
    per_query = pd.DataFrame({"query_id": list(qrels), "query": [queries[q] for q in qrels]})
    for name in SYSTEMS:
        per_query[f"rank_{name}"] = per_query["query_id"].map(ranks[name])
    for name in SYSTEMS:  # with mrr@k's cut-off, so the column's mean is metrics.json's mrr@k
        rr = reciprocal_rank_at_k(runs[name], qrels, int(cfg["mrr_k"]))
        per_query[f"rr@{cfg['mrr_k']}_{name}"] = per_query["query_id"].map(rr).round(4)

    # 5. Plots and the report. Every output is written to a temporary beside it and all are renamed into place
    # together at the end (leaving the with), so a failure anywhere leaves the previous run's four outputs
    curves = pd.DataFrame({"k": range(1, depth + 1)})
    for name in SYSTEMS:
        curves[name] = [round(float(scores[name][f"recall@{k}"].mean()), 4) for k in curves["k"]]
    best_first = {name: {q: (ranked(run.get(q, {})) or [None])[0] for q in qrels} for name, run in runs.items()}
    with atomic_file(METRICS) as metrics_tmp, atomic_file(PER_QUERY) as per_query_tmp, atomic_file(REPORT) as tmp, \
            atomic_dir(PLOTS) as plots:
        write_json(metrics_tmp, metrics)
        per_query.to_csv(per_query_tmp, index=False, float_format="%g")
        curves.to_csv(plots / "recall_at_k.csv", index=False)
        report.plot_recall_curve(curves, plots / "recall_at_k.png")
        report.plot_rank_change(per_query, depth, plots / "rank_change.png")
        report.plot_score_distributions(pairs, plots / "score_distributions.png")
        report.plot_training_curves(TRAIN_LOGS, plots / "training_curves.png")
        tmp.write_text(report.markdown(metrics, per_query, best_first, corpus, qrels, cfg, PLOTS.name), encoding="utf-8")
    log.info("wrote %s, %s, %s/ and %s", METRICS, PER_QUERY, PLOTS, REPORT)


if __name__ == "__main__":
    run_main(main)
