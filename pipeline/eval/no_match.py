""""No good match": the top-score threshold under which a query is flagged, calibrated on validation.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.retrieval import Run, ranked

log = logging.getLogger("pipeline.evaluate")


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


def calibrate_no_match(runs: dict[str, tuple], test_sets: list[str], precision: float) -> tuple[dict, dict]:
    """The threshold set on the users' validation questions (`val_users`) for `precision`, and how it does there and
    on `test_sets`; `runs` maps a set name to (the served model's run, qrels, section_of). Users' questions score
    lower than FAQ-style ones (0.62 against 0.77 median top cosine on the bundled data): a threshold set on both
    would flag half of the users' answerable questions. Returns the metrics.json block and serve.json's."""
    def samples_of(names):
        pairs = [no_match_samples(*runs[n]) for n in names]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    threshold = no_match_threshold(*samples_of(["val_users"]), precision)
    quality = {"val": flag_quality(*samples_of(["val_users"]), threshold), "test": flag_quality(*samples_of(test_sets), threshold)}
    log.info("no good match below %.4f: precision %.3f recall %.3f on validation, %.3f / %.3f on test", threshold,
             quality["val"]["precision"], quality["val"]["recall"], quality["test"]["precision"],
             quality["test"]["recall"])
    metrics = {"threshold": round(threshold, 4), **{f"{split}_{k}": v for split, q in quality.items() for k, v in q.items()}}
    serve = {"threshold": round(threshold, 4), "precision": quality["val"]["precision"],
             "recall": quality["val"]["recall"], "test_precision": quality["test"]["precision"]}
    return metrics, serve
