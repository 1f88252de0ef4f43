"""How far a held-out figure can be trusted: its questions, its topics (the units the interval resamples) and the
width of its interval, and whether that is thin evidence (evaluate.thin_questions, evaluate.thin_topics).

An interval from 3 topics is computed like any other but means little: the bootstrap can only recombine those 3,
so it is both wide and unstable, and a verdict read off it ("better", "worse") is mostly chance. Saying so next to
the figure is cheaper than a reader learning it from the next run.
"""

from __future__ import annotations

import pandas as pd


def set_evidence(qrels: dict, topics: pd.Series | None, comparison: dict, cfg: dict) -> dict:
    """Questions, topics and interval width of one set's fine-tuned-vs-base comparison (`comparison`: paired_test's
    result), and why it is thin, if it is. A question without a topic is a unit of its own, as paired_test counts."""
    ids = pd.Index(list(qrels))
    units = ids.to_series() if topics is None else topics.reindex(ids).fillna(ids.to_series())
    questions, n_topics = len(ids), int(units.nunique())
    why = []
    if questions < int(cfg["thin_questions"]):
        why.append(f"{questions} questions (fewer than {cfg['thin_questions']})")
    if n_topics < int(cfg["thin_topics"]):
        why.append(f"{n_topics} topics (fewer than {cfg['thin_topics']}; the interval resamples whole topics)")
    return {"questions": questions, "topics": n_topics,
            "ci_width": round(float(comparison["ci_high"]) - float(comparison["ci_low"]), 4),
            "thin": bool(why), "why": " and ".join(why) or None}


def thin_warnings(evidence: dict[str, dict], guards: list[str], validation: list[str]) -> list[str]:
    """What the serving decision rests on, where that is thin: a guard set (a loss there may not show), or a
    validation set (it chose the checkpoint and the merge weight)."""
    lines = []
    for name in guards:
        if evidence.get(name, {}).get("thin"):
            lines.append(f"guard set {name} is thin evidence, {evidence[name]['why']}: the do-no-harm decision rests on "
                         "it, and a real loss there may not show as significant")
    for name in validation:
        if evidence.get(name, {}).get("thin"):
            lines.append(f"validation set {name} is thin evidence, {evidence[name]['why']}: the checkpoint and merge "
                         "weight it chose may change with a small edit of the data")
    return lines
