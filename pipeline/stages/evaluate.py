"""Stage 3b, evaluate: score the fine-tuned model and a hybrid against the baselines on every held-out set.

Reads   params: evaluate.*, encode.* (the index's own encoding: what is served is what was scored)
        files:  data/prepared/{test,testsets/*,val,val_users}/, data/passages.jsonl (a set judging the served
                sections is scored on the served passages), models/finetuned/, reports/baselines/, reports/train/,
                reports/data_stats.json
Writes  reports/metrics.json     the main test set (the FAQ split or data.testset) at the top level, as always:
                                   "base", "finetuned", "bm25", "hybrid": mrr@10, ndcg@10, map@100, recall@1/5/10/20;
                                   "finetuned_vs_base", "finetuned_vs_bm25": paired delta, 95% bootstrap interval,
                                   randomisation-test p-value;
                                 "testsets": {name: the same systems and "finetuned_vs_base"} for data.testsets;
                                 "base_val", "finetuned_val", "base_val_users", "finetuned_val_users" and
                                   "finetuned_val_users_vs_base_val_users": the validation sets that chose the model;
                                 "no_match": the served model's "no good match" threshold, calibrated on validation
                                   (evaluate.no_match_precision), with its precision and recall there and on test;
                                 "evidence": per held-out and validation set, its questions, topics, the width of
                                   its NDCG interval, and whether that is thin evidence (evaluate.thin_questions,
                                   evaluate.thin_topics): the report and the log say so next to the figure
        reports/per_query.csv    every query of every held-out set: rank of its first relevant passage and
                                 reciprocal rank @k per system
                                 (rr@{mrr_k}_<system>: 0 below rank mrr_k, so each column averages to mrr@{mrr_k})
        reports/plots/           recall@k curve (CSV for `dvc plots`, PNG), rank change, score distributions,
                                 training curves (PNG)
        reports/report.md        the one page to show a colleague: a verdict per held-out set first; when the
                                 served model, the merge weight or the training precision differs from the last
                                 committed run (git HEAD), what changed and the figures that decided it
        reports/serve.json       which model the index serves: the base model when the fine-tuned one is
                                 significantly worse on a guard set (evaluate.guards), and why; its no-match threshold

    python -m pipeline.stages.evaluate
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from pipeline import report
from pipeline.data.readers import read_topics
from pipeline.embeddings import encode_cached
from pipeline.eval.changes import changes, committed
from pipeline.eval.evidence import set_evidence
from pipeline.eval.gate import held_out_blocks, serving_decision
from pipeline.eval.heldout import found_sections, held_out_sets, scored_set, set_topics
from pipeline.eval.metrics import first_relevant_rank, pair_scores, per_query_metrics, reciprocal_rank_at_k, summary
from pipeline.eval.no_match import calibrate_no_match
from pipeline.eval.paired_test import paired_test
from pipeline.files import atomic_outputs, read_jsonl, write_json
from pipeline.models import load_model, pick_precision
from pipeline.params import load_params, run_main
from pipeline.paths import (
    BASELINES,
    DATA_STATS,
    FINETUNED,
    METRICS,
    PASSAGES,
    PER_QUERY,
    PLOTS,
    PREPARED,
    REPORT,
    SERVE,
    TRAIN_LOGS,
)
from pipeline.retrieval import dense_run, load_run, ranked, rrf

log = logging.getLogger("pipeline.evaluate")
SYSTEMS = ["base", "finetuned", "bm25", "hybrid"]


def main() -> None:
    cfg, enc = load_params("evaluate"), load_params("encode")
    depth, seed, samples, mrr_k = int(cfg["depth"]), int(cfg["seed"]), int(cfg["bootstrap_samples"]), int(cfg["mrr_k"])
    batch_size, precision = int(enc["batch_size"]), pick_precision(enc["precision"], "encode.precision")
    headline = [f"mrr@{mrr_k}", f"ndcg@{cfg['ndcg_k']}"]
    model = load_model(str(FINETUNED), max_seq_length=int(enc["max_seq_length"]))
    served = read_jsonl(PASSAGES)

    # 1. Every held-out set (the main test set, then data.testsets): fine-tuned run, the baselines' runs, the hybrid;
    # a set judging the served sections is retrieved from the served chunks and scored per section (scored_set)
    metrics: dict = {}
    tables, scores, main, sizes, raw, evidence = [], {}, {}, {}, {}, {}
    for name, folder in held_out_sets(PREPARED).items():
        corpus, queries, qrels, section_of = scored_set(folder, served)
        sizes[name] = len(qrels)
        runs = {s: load_run(BASELINES / f"{name}_{s}.json") for s in ("base", "bm25")}
        runs["finetuned"], q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size, precision,
                                                     encode_cached)
        runs["hybrid"] = rrf([runs["bm25"], runs["finetuned"]], int(cfg["rrf_k"]), depth)
        raw[name] = (runs, qrels, section_of, *set_topics(folder, served, section_of))
        pair_run = runs["finetuned"]
        runs = {s: found_sections(r, qrels, section_of) for s, r in runs.items()}
        scores[name] = {s: per_query_metrics(runs[s], qrels, cfg) for s in SYSTEMS}
        block = {s: summary(scores[name][s], cfg) for s in SYSTEMS}
        topics = read_topics(folder)
        for other in ["base", "bm25"] if name == "test" else ["base"]:
            block[f"finetuned_vs_{other}"] = {m: paired_test(scores[name]["finetuned"][m], scores[name][other][m],
                                                             samples, seed, topics) for m in headline}
        evidence[name] = set_evidence(qrels, topics, block["finetuned_vs_base"][headline[1]], cfg)
        if name == "test":
            metrics.update(block)
            main = {"runs": runs, "corpus": corpus, "qrels": qrels, "pairs": {
                "base": pd.read_csv(BASELINES / "test_base_pair_scores.csv"),
                "finetuned": pair_scores(pair_run, qrels, q_emb, c_emb, queries, corpus, section_of)}}
        else:
            metrics.setdefault("testsets", {})[name] = block
        table = pd.DataFrame({"set": name, "query_id": list(qrels), "query": [queries[q] for q in qrels]})
        for s in SYSTEMS:
            table[f"rank_{s}"] = table["query_id"].map(first_relevant_rank(runs[s], qrels))
        for s in SYSTEMS:
            table[f"rr@{mrr_k}_{s}"] = table["query_id"].map(reciprocal_rank_at_k(runs[s], qrels, mrr_k)).round(4)
        tables.append(table)
        log.info("%-20s %s%s", name, "  ".join(f"{s} ndcg@10 {block[s]['ndcg@10']:.4f}" for s in SYSTEMS),
                 f"  ({len(corpus)} served passages)" if section_of else "")

    # 2. The validation sets that chose the checkpoint and the merge weight, FAQ-style and as users write
    for name in ("val", "val_users"):
        corpus, queries, qrels, section_of = scored_set(PREPARED / name, served)
        runs = {"base": load_run(BASELINES / f"{name}_base.json"),
                "finetuned": dense_run(model, corpus, queries, depth, batch_size, precision, encode_cached)[0]}
        raw[name] = (runs, qrels, section_of, *set_topics(PREPARED / name, served, section_of))
        scores[name] = {s: per_query_metrics(found_sections(runs[s], qrels, section_of), qrels, cfg) for s in runs}
        metrics[f"base_{name}"], metrics[f"finetuned_{name}"] = (summary(scores[name][s], cfg) for s in ("base", "finetuned"))
    metrics["finetuned_val_users_vs_base_val_users"] = {
        m: paired_test(scores["val_users"]["finetuned"][m], scores["val_users"]["base"][m], samples, seed,
                       read_topics(PREPARED / "val_users")) for m in headline}
    for name in ("val", "val_users"):  # how much the choice of checkpoint and merge weight can be trusted
        topics = read_topics(PREPARED / name)
        evidence[name] = set_evidence(raw[name][1], topics, paired_test(
            scores[name]["finetuned"][headline[1]], scores[name]["base"][headline[1]], samples, seed, topics), cfg)
    metrics["evidence"] = evidence  # per set: questions, topics, interval width, thin or not (evaluate.thin_*)
    for name, e in evidence.items():
        if e["thin"]:
            log.warning("%s is thin evidence, %s: its interval (width %.4f) means little", name, e["why"],
                        e["ci_width"])

    # 3. Do no harm: which model the index serves (the base model when the fine-tuned one loses on a guard set)
    serve = serving_decision(metrics, list(cfg["guards"] or []), evidence, headline[1], ("val", "val_users"))
    for warning in serve["warnings"]:
        log.warning("%s", warning)
    if serve["model"] == "base":
        log.warning("the index will serve the base model: %s", serve["reason"])

    # 4. "No good match": the served model's top score below a threshold set on the users' validation questions,
    # reported on the users' test sets (data.testsets; the main test set when there are none)
    users_sets = [n for n in sizes if n != "test"] or ["test"]
    metrics["no_match"], serve["no_match"] = calibrate_no_match(
        {n: (runs[serve["model"]], *rest) for n, (runs, *rest) in raw.items()},
        users_sets, float(cfg["no_match_precision"]), float(cfg["no_match_unanswerable_share"]))

    # 5. Per-query evidence, plots and the report, written together: a failure leaves the previous ones
    per_query = pd.concat(tables, ignore_index=True)
    test_rows = per_query[per_query["set"] == "test"]
    curves = pd.DataFrame({"k": range(1, depth + 1)})
    for s in SYSTEMS:
        curves[s] = [round(float(scores["test"][s][f"recall@{k}"].mean()), 4) for k in curves["k"]]
    best_first = {s: {q: (ranked(run.get(q, {})) or [None])[0] for q in main["qrels"]} for s, run in main["runs"].items()}
    stats = json.loads(DATA_STATS.read_text(encoding="utf-8"))
    chosen = TRAIN_LOGS / "metrics.json"  # the merge weight validation chose (absent for a model trained elsewhere)
    stats["selection"] = json.loads(chosen.read_text(encoding="utf-8")) if chosen.is_file() else {}
    # 6. What changed since the last committed run (git HEAD), and the figures that decided it
    before_metrics = committed(METRICS)
    before_blocks = held_out_blocks(before_metrics) if before_metrics else {}
    changed = changes({"selection": committed(chosen), "serve": committed(SERVE)},
                      {"selection": stats["selection"], "serve": serve}, {
                          n: (before_blocks[n], b) for n, b in held_out_blocks(metrics).items() if n in before_blocks},
                      headline[1])
    for line in changed:
        if line.startswith("- "):
            log.warning("since the committed run: %s", line[2:].replace("**", ""))
    with atomic_outputs(PLOTS, PER_QUERY, REPORT, METRICS, SERVE) as (plots, per_query_tmp, report_tmp, metrics_tmp,
                                                                       serve_tmp):
        plots.mkdir()
        curves.to_csv(plots / "recall_at_k.csv", index=False)
        report.plot_recall_curve(curves, plots / "recall_at_k.png")
        report.plot_rank_change(test_rows, depth, plots / "rank_change.png")
        report.plot_score_distributions(main["pairs"], plots / "score_distributions.png")
        report.plot_training_curves(TRAIN_LOGS, plots / "training_curves.png")
        per_query.to_csv(per_query_tmp, index=False, float_format="%g")
        report_tmp.write_text(report.markdown(metrics, test_rows, best_first, main["corpus"], main["qrels"], cfg,
                                              PLOTS.name, stats, sizes, serve, changed), encoding="utf-8")
        write_json(metrics_tmp, metrics)
        write_json(serve_tmp, serve)
    log.info("wrote %s, %s, %s/, %s and %s", METRICS, PER_QUERY, PLOTS, REPORT, SERVE)


if __name__ == "__main__":
    run_main(main)
