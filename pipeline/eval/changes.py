"""What changed since the last committed run: the served model, the merge weight validation chose, the training
precision, and the figures they moved.

The previous run is the one committed in git (HEAD): its reports/train/metrics.json, reports/serve.json and
reports/metrics.json are small metric files git holds (their hashes are in the committed dvc.lock), and it is the
run `dvc metrics diff` compares with. By the time evaluate runs, DVC has already replaced this run's own outputs,
so the working copies cannot say what came before. Outside git, or before the first commit, nothing is compared.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def committed(path: Path) -> dict | None:
    """A JSON file as of git HEAD (relative to the current folder, the project root), or None."""
    try:
        out = subprocess.run(["git", "show", f"HEAD:./{path.as_posix()}"], capture_output=True, text=True)
    except OSError:  # no git on this host
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def _weights(selection: dict, key: str) -> dict[str, float]:
    return {str(k): v for k, v in (selection.get(key) or {}).items()}


def changes(before: dict, now: dict, sets: dict[str, tuple[dict, dict]], metric: str) -> list[str]:
    """Markdown lines saying what differs from the committed run, and the figures that decided it, side by side.

    `before` and `now`: {"selection": train metrics.json, "serve": serve.json}; `sets`: name -> (committed block,
    current block) of each held-out set's metrics, to show how far the figures moved. Empty when nothing changed
    that decides what is served (a re-run that reproduces the committed one says nothing)."""
    old_sel, new_sel = before.get("selection") or {}, now.get("selection") or {}
    old_model, new_model = (before.get("serve") or {}).get("model"), (now.get("serve") or {}).get("model")
    lines = []
    if old_model and new_model and old_model != new_model:
        why = (now["serve"].get("reason") or "no guard set lost") if new_model == "base" else "no guard set lost now"
        lines.append(f"- The index now serves the **{new_model}** model; the committed run served the {old_model} "
                     f"model. Why: {why}.")
    old_alpha, new_alpha = old_sel.get("merge_alpha"), new_sel.get("merge_alpha")
    if old_alpha is not None and new_alpha is not None and old_alpha != new_alpha:
        lines.append(f"- Validation now chose merge weight **{new_alpha:g}**; the committed run chose {old_alpha:g}. "
                     "The validation figures that decided it, by weight:")
        lines += ["", "| weight | users' validation now | committed | FAQ-style validation now | committed |",
                  "|---|---|---|---|---|"]
        users = [_weights(s, "merge_val_users_ndcg@10") for s in (new_sel, old_sel)]
        faq = [_weights(s, "merge_val_ndcg@10") for s in (new_sel, old_sel)]
        for w in sorted(set(users[0]) | set(users[1]), key=float):
            cells = [f"{d[w]:.4f}" if w in d else "–" for d in (users[0], users[1], faq[0], faq[1])]
            mark = " (chosen now)" if float(w) == new_alpha else " (chosen before)" if float(w) == old_alpha else ""
            lines.append(f"| {float(w):g}{mark} | " + " | ".join(cells) + " |")
        lines.append("")
    old_prec, new_prec = old_sel.get("precision"), new_sel.get("precision")
    if old_prec and new_prec and old_prec != new_prec:
        lines.append(f"- Trained in **{new_prec}** on this host; the committed run trained in {old_prec} "
                     "(`train.precision: auto` resolves by hardware). Figures are not expected to match to four "
                     "decimals: how far they moved is below. Set `train.precision` to the committed run's to "
                     "reproduce it.")
    if lines:
        lines += ["", f"| set | {metric} committed | now | moved |", "|---|---|---|---|"]
        for name, (old, new) in sets.items():
            for system in ("base", "finetuned"):
                if system in old and system in new:
                    a, b = old[system][metric], new[system][metric]
                    lines.append(f"| {name} ({system}) | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return lines
