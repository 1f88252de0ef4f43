"""Plots (matplotlib) and the one-page Markdown report written by the evaluate stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in CI or over ssh
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.eval.gate import held_out_blocks, verdict  # noqa: E402

COLORS = {"base": "tab:gray", "finetuned": "tab:blue", "bm25": "tab:orange", "hybrid": "tab:green"}
LABELS = {"base": "base model", "finetuned": "fine-tuned", "bm25": "BM25", "hybrid": "hybrid (BM25 + fine-tuned, RRF)"}


def plot_recall_curve(curves: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in [c for c in curves.columns if c != "k"]:
        ax.plot(curves["k"], curves[name], label=LABELS.get(name, name), color=COLORS.get(name))
    ax.set(xscale="log", xlabel="k (passages retrieved)", ylabel="recall@k", ylim=(0, 1.01),
           title="Recall@k on the held-out test questions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rank_change(per_query: pd.DataFrame, depth: int, path: Path) -> None:
    """Base rank against fine-tuned rank of the first relevant passage; below the diagonal = fine-tuning helped."""
    miss = depth * 1.5  # "not in the top `depth`" drawn past the last rank
    base = per_query["rank_base"].fillna(miss)
    tuned = per_query["rank_finetuned"].fillna(miss)
    jitter = np.random.default_rng(0).uniform(0.9, 1.1, size=(2, len(base)))  # separate the many ties at rank 1
    colors = np.where(tuned < base, "tab:green", np.where(tuned > base, "tab:red", "tab:gray"))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(base * jitter[0], tuned * jitter[1], c=colors, s=14, alpha=0.6)
    ax.plot([0.8, miss * 1.2], [0.8, miss * 1.2], color="black", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="rank under the base model", ylabel="rank under the fine-tuned model",
           title=f"Rank change per query: {int((tuned < base).sum())} better, {int((tuned > base).sum())} worse, "
                 f"{int((tuned == base).sum())} same")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_distributions(pairs: dict[str, pd.DataFrame], path: Path) -> None:
    """Cosine of (query, positive) and (query, hardest negative): fine-tuning should pull the two apart."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(10, 3.8), sharey=True)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, (name, df) in zip(np.atleast_1d(axes), pairs.items()):
        ax.hist(df["positive"], bins=bins, alpha=0.6, label="query, relevant passage", color="tab:green")
        ax.hist(df["hardest_negative"].dropna(), bins=bins, alpha=0.6, label="query, hardest negative", color="tab:red")
        gap = (df["positive"] - df["hardest_negative"]).mean()
        ax.set(title=f"{LABELS.get(name, name)}: mean gap {gap:+.3f}", xlabel="cosine similarity")
        ax.title.set_fontsize(10)
    np.atleast_1d(axes)[0].set_ylabel("test queries")
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(live_dir: Path, path: Path) -> None:
    """Training loss, and per validation check the NDCG@10 of each validation set and their mean, the score that
    chose the checkpoint kept (read from the dvclive logs of the train stage)."""
    metrics = live_dir / "plots" / "metrics"
    fig, ax = plt.subplots(figsize=(7, 4))
    loss_file = metrics / "loss.tsv"
    if loss_file.exists():
        loss = pd.read_csv(loss_file, sep="\t")
        ax.plot(loss["step"], loss["loss"], color="tab:blue", label="training loss")
    ax.set(xlabel="step", ylabel="training loss")
    curves = [(metrics / "eval" / f"{name}.tsv", label, style) for name, label, style in (
        ("val_cosine_ndcg@10", "FAQ-style validation NDCG@10", "tab:green"),
        ("val_users_cosine_ndcg@10", "users' validation NDCG@10", "tab:orange"),
        ("sequential_score", "their mean: chooses the checkpoint", "black"))]
    if any(f.exists() for f, _, _ in curves):
        ax2 = ax.twinx()
        for file, label, color in curves:
            if file.exists():
                values = pd.read_csv(file, sep="\t")
                ax2.plot(values["step"], values.iloc[:, -1], color=color, marker="o", label=label)
        ax2.set_ylabel("validation NDCG@10")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left")
    ax.set_title("Training: loss and validation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(text: str | None, n: int = 160) -> str:
    if text is None:
        return "(nothing retrieved)"
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _rank(r) -> str:
    return "–" if pd.isna(r) else str(int(r))


def headline_lines(metrics: dict, stats: dict, sizes: dict[str, int], serve: dict, cfg: dict) -> list[str]:
    """The top of the report: one verdict per held-out set, what the index serves, and what limits the evidence."""
    m = f"ndcg@{cfg['ndcg_k']}"
    lines = []
    evidence = metrics.get("evidence", {})
    for name, block in held_out_blocks(metrics).items():
        t = block["finetuned_vs_base"][m]
        word = verdict(t)
        text = {"better": "better than", "worse": "**worse than**", "no significant difference": "no different from"}[word]
        thin = evidence.get(name, {})
        lines.append(f"- **{name}** ({sizes[name]} questions): fine-tuned {text} the base model, {m} "
                     f"{block['base'][m]:.4f} → {block['finetuned'][m]:.4f}, {t['delta']:+.4f} "
                     f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]"
                     + (f" — **thin evidence**: {thin['why']}; this interval means little" if thin.get("thin") else ""))
    chosen = stats.get("selection", {})
    if "merge_alpha" in chosen:
        users = chosen.get("merge_val_users_ndcg@10", {})
        base_users = chosen.get("val_users_ndcg@10_before")
        candidates = ", ".join(f"{a}: {v:.4f}" for a, v in users.items())
        what = ("the base model itself (weight 0): every trained candidate lost on validation" if chosen["merge_alpha"] == 0
                else f"merge weight {chosen['merge_alpha']:g} (fine-tuned share of the weights)")
        lines.append(f"- Validation chose {what}; users' validation NDCG@10 by weight {{{candidates}}}, base model "
                     f"{base_users}.")
    served = "the fine-tuned model" if serve["model"] == "finetuned" else "**the base model**"
    lines.append(f"- The index serves {served}" + (f": {serve['reason']}." if serve.get("reason") else
                                                      f" (guard sets: {', '.join(serve['guards']) or 'none'})."))
    lines += [f"- Warning: {w}." for w in serve["warnings"]]
    if "no_match" in metrics:
        nm = metrics["no_match"]
        share = f"when {nm['unanswerable_share']:.0%} of the questions asked have no answer in the index"
        if nm["threshold"] is None:
            lines.append(f"- \"No good match\" is never flagged: no threshold is right {cfg['no_match_precision']:.0%} "
                         f"of the time on the users' validation questions {share}.")
        else:
            flagged = ("none of them is flagged" if nm["test_precision"] is None else
                       f"{nm['test_recall']:.0%} of them are flagged, at {nm['test_precision']:.0%} precision")
            lines.append(f"- \"No good match\" when the top cosine is below {nm['threshold']:.3f} (set on validation "
                         f"for {cfg['no_match_precision']:.0%} precision {share}): on the users' test sets with each "
                         f"question's topic taken out of the index, {flagged}; {nm['test_false_flags']:.0%} of "
                         "answerable questions are flagged.")
    by_source = stats.get("pairs", {}).get("train_by_source", {})
    total = sum(by_source.values())
    if total and max(by_source.values()) > 0.8 * total:
        source, count = max(by_source.items(), key=lambda x: x[1])
        lines.append(f"- {count} of the {total} training pairs come from one source ({source}): the model learns "
                     "that source's way of asking.")
    return lines


def markdown(metrics: dict, per_query: pd.DataFrame, best_first: dict, corpus: dict, qrels: dict, cfg: dict,
             plots: str, stats: dict, sizes: dict[str, int], serve: dict, changed: list[str] = ()) -> str:
    keys = list(metrics["base"])
    headline = [f"mrr@{cfg['mrr_k']}", f"ndcg@{cfg['ndcg_k']}"]
    rr = f"rr@{cfg['mrr_k']}"
    lines = ["# Retrieval report", "", *headline_lines(metrics, stats, sizes, serve, cfg), ""]
    if changed:  # pipeline/eval/changes.py
        lines += ["## Since the last committed run", "", *changed, ""]
    lines += [f"## Main test set: {len(per_query)} held-out questions, {len(corpus)} passages", "",
              "Higher is better everywhere.", "",
              "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ["base", "finetuned", "bm25", "hybrid"]:
        lines.append(f"| {LABELS[name]} | " + " | ".join(f"{metrics[name][k]:.4f}" for k in keys) + " |")
    for name, block in metrics.get("testsets", {}).items():
        lines += ["", f"## Test set {name}: {sizes[name]} questions", "",
                  "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for system in ["base", "finetuned", "bm25", "hybrid"]:
            lines.append(f"| {LABELS[system]} | " + " | ".join(f"{block[system][k]:.4f}" for k in keys) + " |")
    lines += ["", "## Is the difference real?", "",
              "Paired over the same queries: mean difference, 95% bootstrap interval, two-sided randomisation-test "
              f"p-value ({cfg['bootstrap_samples']} resamples, seed {cfg['seed']}). Where the questions carry a "
              "topic, whole topics are resampled.", "",
              "| set | comparison | metric | delta | 95% interval | p-value |", "|---|---|---|---|---|---|"]
    comparisons = [("test", c, metrics[c]) for c in ["finetuned_vs_base", "finetuned_vs_bm25"]]
    comparisons += [(n, "finetuned_vs_base", b["finetuned_vs_base"]) for n, b in metrics.get("testsets", {}).items()]
    comparisons += [("val_users", "finetuned_vs_base", metrics["finetuned_val_users_vs_base_val_users"])]
    for set_name, comp, block in comparisons:
        for m in headline:
            t = block[m]
            lines.append(f"| {set_name} | {comp.replace('_vs_', ' vs ')} | {m} | {t['delta']:+.4f} | "
                         f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] | {t['p_value']:.4f} |")
    lines += ["", "How much each set can say: the questions it has, the topics the interval resamples, and the "
              f"interval's width ({headline[1]}, fine-tuned vs base). Under {cfg['thin_questions']} questions or "
              f"{cfg['thin_topics']} topics a set is thin evidence: its interval is computed but means little.", "",
              "| set | questions | topics | interval width | thin evidence |", "|---|---|---|---|---|"]
    for name, e in metrics.get("evidence", {}).items():
        lines.append(f"| {name} | {e['questions']} | {e['topics']} | {e['ci_width']:.4f} | "
                     f"{'**yes**: ' + e['why'] if e['thin'] else 'no'} |")
    lines += ["", "## Validation: FAQ-style and as users write", "",
              "The checkpoint and the merge weight were chosen on these two sets (the mean of their NDCG@10), so "
              "they are not a test; the held-out sets above are.", "",
              "| set | base " + headline[0] + " | fine-tuned " + headline[0] + " | gain | base " + headline[1]
              + " | fine-tuned " + headline[1] + " | gain |", "|---|---|---|---|---|---|---|"]
    for label, b, f in [("validation, FAQ-style", "base_val", "finetuned_val"),
                        ("validation, as users write", "base_val_users", "finetuned_val_users")]:
        cells = []
        for m in headline:
            cells += [f"{metrics[b][m]:.4f}", f"{metrics[f][m]:.4f}", f"{metrics[f][m] - metrics[b][m]:+.4f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", "",
              f"![recall@k]({plots}/recall_at_k.png)", "",
              f"![rank change per query]({plots}/rank_change.png)", "",
              f"![score distributions]({plots}/score_distributions.png)", "",
              f"![training curves]({plots}/training_curves.png)", ""]
    rr = f"rr@{cfg['mrr_k']}"
    change = per_query.assign(delta=per_query[f"{rr}_finetuned"] - per_query[f"{rr}_base"])
    n = int(cfg["report_examples"])
    for title, rows in [("Biggest wins (fine-tuned ranks the answer higher)", change.nlargest(n, "delta")),
                        ("Biggest losses (fine-tuned ranks the answer lower)", change.nsmallest(n, "delta"))]:
        rows = rows[rows["delta"] != 0]
        lines += [f"## {title}", ""]
        if rows.empty:
            lines += ["None.", ""]
            continue
        lines += ["| query | rank base → fine-tuned | base put first | fine-tuned put first |", "|---|---|---|---|"]
        for r in rows.itertuples():
            firsts = []
            for name in ["base", "finetuned"]:
                doc = best_first[name][r.query_id]
                mark = "✓ " if doc in qrels[r.query_id] else "✗ "
                firsts.append(mark + _short(corpus.get(doc)))
            lines.append(f"| {_short(r.query, 120)} | {_rank(r.rank_base)} → {_rank(r.rank_finetuned)} | "
                         f"{firsts[0]} | {firsts[1]} |")
        lines.append("")
    lines += ["✓: the passage put first is a relevant one; ✗: it is not. Rank –: not in the top "
              f"{cfg['depth']}. Every query is in `reports/per_query.csv`.", ""]
    return "\n".join(lines)
