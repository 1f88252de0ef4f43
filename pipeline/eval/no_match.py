""""No good match": the top-score threshold under which a query is flagged, calibrated on validation.

Test sets judge answerable questions only. The unanswerable case is had from them by taking out of the ranking
everything the index holds on the question's topic: the documents judged for it, every document judged for
another question of the topic, and every passage whose topic (a FAQ group, a document's name: data/kb.py) is one
of theirs. Taking out only the judged documents leaves same-topic answers in place (on the bundled data every
`pet_owners_val` question kept 3.2 on average), and their scores are hits, not the index's "nothing on this".

How often a flag is right depends on how many questions have no answer, which no test set says: the precision is
stated at a share of unanswerable questions (evaluate.no_match_unanswerable_share), not at one in two.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from pipeline.retrieval import Run, ranked

log = logging.getLogger("pipeline.evaluate")


def no_match_samples(run: Run, qrels: dict[str, dict[str, int]], section_of: dict[str, str] | None = None,
                     query_topics: dict | None = None, doc_topics: dict | None = None):
    """Top scores per query with its answers in the corpus, and with its topic taken out (see the module's note);
    ids are a run's passage ids, a chunk standing for its section (`section_of`) and a section for its document."""
    query_topics, doc_topics = query_topics or {}, doc_topics or {}

    def document(doc_id: str) -> str:
        return (section_of or {}).get(doc_id, doc_id).split("#")[0]

    judged_in_topic = defaultdict(set)
    for qid, relevant in qrels.items():
        if query_topics.get(qid):
            judged_in_topic[query_topics[qid]] |= set(relevant)
    answered, unanswered = [], []
    for qid, relevant in qrels.items():
        scores = run.get(qid, {})
        order = ranked(scores)
        if not order:
            continue
        answered.append(scores[order[0]])
        judged = set(relevant) | judged_in_topic.get(query_topics.get(qid), set())
        documents = {document(d) for d in judged}
        topics = ({doc_topics.get(d) for d in judged} | {query_topics.get(qid)}) - {None}
        rest = [scores[d] for d in order if document(d) not in documents and doc_topics.get(d) not in topics]
        if rest:
            unanswered.append(rest[0])
    return np.array(answered, dtype=float), np.array(unanswered, dtype=float)


def flag_rates(answered: np.ndarray, unanswered: np.ndarray, threshold: float | None, share: float) -> dict:
    """recall: share of unanswerable questions flagged; false_flags: share of answerable ones flagged; precision:
    share of flags that are right when `share` of the questions asked are unanswerable (None: nothing flagged)."""
    if threshold is None:
        return {"precision": None, "recall": 0.0, "false_flags": 0.0}
    recall = float((unanswered < threshold).mean()) if len(unanswered) else 0.0
    false = float((answered < threshold).mean()) if len(answered) else 0.0
    flagged = share * recall + (1 - share) * false
    return {"precision": round(share * recall / flagged, 4) if flagged else None, "recall": round(recall, 4),
            "false_flags": round(false, 4)}


def no_match_threshold(answered: np.ndarray, unanswered: np.ndarray, precision: float, share: float) -> float | None:
    """The highest threshold t such that "top score < t" is right at least `precision` of the times it fires when
    `share` of the questions are unanswerable: as many of them flagged as that precision allows. None when no t
    reaches it: then nothing is ever flagged."""
    scores = np.unique(np.concatenate([answered, unanswered]))
    cuts = np.r_[(scores[:-1] + scores[1:]) / 2, scores[-1:] + 1e-6] if len(scores) else scores  # between scores
    recall = np.searchsorted(np.sort(unanswered), cuts) / max(1, len(unanswered))  # share below each cut
    false = np.searchsorted(np.sort(answered), cuts) / max(1, len(answered))
    flagged = share * recall + (1 - share) * false
    ok = np.flatnonzero((recall > 0) & (share * recall >= precision * flagged))
    return float(cuts[ok.max()]) if len(ok) else None


def calibrate_no_match(sets: dict[str, tuple], test_sets: list[str], precision: float, share: float) -> tuple[dict, dict]:
    """The threshold set on the users' validation questions (`val_users`) for `precision` at `share` unanswerable,
    and how it does there and on `test_sets`; `sets` maps a set name to no_match_samples' arguments (the served
    model's run first). Users' questions score lower than FAQ-style ones (0.62 against 0.77 median top cosine on
    the bundled data): a threshold set on both would flag half of the users' answerable questions. Returns the
    metrics.json block and serve.json's."""
    def samples_of(names):
        pairs = [no_match_samples(*sets[n]) for n in names]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    threshold = no_match_threshold(*samples_of(["val_users"]), precision, share)
    quality = {"val": flag_rates(*samples_of(["val_users"]), threshold, share),
               "test": flag_rates(*samples_of(test_sets), threshold, share)}
    if threshold is None:
        log.warning("no \"no good match\" threshold reaches %.0f%% precision at %.0f%% unanswerable questions on "
                    "validation: nothing will be flagged", 100 * precision, 100 * share)
    else:
        log.info("no good match below %.4f: precision %s recall %.3f on validation, %s / %.3f on test (at %.0f%% "
                 "unanswerable)", threshold, quality["val"]["precision"], quality["val"]["recall"],
                 quality["test"]["precision"], quality["test"]["recall"], 100 * share)
    rounded = None if threshold is None else round(threshold, 4)
    metrics = {"threshold": rounded, "unanswerable_share": share,
               **{f"{split}_{k}": v for split, q in quality.items() for k, v in q.items()}}
    serve = {"threshold": rounded, "unanswerable_share": share, "precision": quality["val"]["precision"],
             "recall": quality["val"]["recall"], "test_precision": quality["test"]["precision"]}
    return metrics, serve
