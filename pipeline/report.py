"""Plots (matplotlib) and the one-page Markdown report written by the evaluate stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in CI or over ssh
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
    """Training loss and validation NDCG@10 per step, read from the dvclive logs of the train stage."""
    metrics = live_dir / "plots" / "metrics"
    fig, ax = plt.subplots(figsize=(7, 4))
    loss_file, ndcg_file = metrics / "loss.tsv", metrics / "eval" / "val_cosine_ndcg@10.tsv"
    if loss_file.exists():
        loss = pd.read_csv(loss_file, sep="\t")
        ax.plot(loss["step"], loss["loss"], color="tab:blue", label="training loss")
    ax.set(xlabel="step", ylabel="training loss")
    if ndcg_file.exists():
        ndcg = pd.read_csv(ndcg_file, sep="\t")
        ax2 = ax.twinx()
        ax2.plot(ndcg["step"], ndcg.iloc[:, -1], color="tab:green", marker="o", label="validation NDCG@10")
        ax2.set_ylabel("validation NDCG@10")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("Training: loss and validation NDCG@10")
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


def markdown(metrics: dict, per_query: pd.DataFrame, best_first: dict, corpus: dict, qrels: dict, cfg: dict,
             plots: str) -> str:
    keys = list(metrics["base"])
    headline = [f"mrr@{cfg['mrr_k']}", f"ndcg@{cfg['ndcg_k']}"]
    lines = ["# Retrieval report", "",
             f"{len(per_query)} held-out test questions, {len(corpus)} passages. Higher is better everywhere.", "",
             "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ["base", "finetuned", "bm25", "hybrid"]:
        lines.append(f"| {LABELS[name]} | " + " | ".join(f"{metrics[name][k]:.4f}" for k in keys) + " |")
    lines += ["", "## Is the difference real?", "",
              "Paired over the same queries: mean difference, 95% bootstrap interval, two-sided randomisation-test "
              f"p-value ({cfg['bootstrap_samples']} resamples, seed {cfg['seed']}).", "",
              "| comparison | metric | delta | 95% interval | p-value |", "|---|---|---|---|---|"]
    for comp in ["finetuned_vs_base", "finetuned_vs_bm25", "finetuned_noisy_vs_base_noisy"]:
        for m in headline:
            t = metrics[comp][m]
            lines.append(f"| {comp.replace('_vs_', ' vs ')} | {m} | {t['delta']:+.4f} | "
                         f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] | {t['p_value']:.4f} |")
    lines += ["", "## Clean against noisy questions", "",
              "Validation questions as written, and the same questions rewritten the way users type "
              "(context, lowercase, typos; `prepare.noisy`). A recipe that only learned the FAQ's templates gains "
              "on the first and not on the second.", "",
              "| set | base " + headline[0] + " | fine-tuned " + headline[0] + " | gain | base " + headline[1]
              + " | fine-tuned " + headline[1] + " | gain |", "|---|---|---|---|---|---|---|"]
    for label, b, f in [("validation, clean", "base_val", "finetuned_val"), ("validation, noisy", "base_noisy", "finetuned_noisy")]:
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
