"""Users' messages as training data (data.messages): what a deployment's logs hold, in the users' own words.

A message is *linked* when its row names what resolved it: the plain question it asks (`question`), the answer
(`answer`), an FAQ row (`faq_row`) or a served passage (`passage_id`: `kb/<stem>#<n>`, `faq/<row>`). Otherwise it
is *unlinked* (a query log), and it is labelled here only where two retrievers that share nothing agree: the base
model and BM25 put the same passage first, and the base model's first passage leads its second by a margin. The
labeller is checked on the linked messages with their links hidden (`label_precision` in data_stats.json).

Every message becomes a (message, passage) training pair, and a (message, question) pair when it names the question:
the model learns that the two mean the same, which is what FAQ-style training never shows it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.data.readers import normalize, read_records
from pipeline.data.sources import kb_document
from pipeline.embeddings import encode_cached
from pipeline.params import InputError
from pipeline.retrieval import bm25_index, bm25_tokens, encode

log = logging.getLogger("pipeline.prepare")
ROLES = ("message", "question", "answer", "faq_row", "passage_id")
MESSAGE_KINDS = ("message", "message_question", "message_label")  # the pairs made here: training only, never scored


def read_messages(files: list[str], columns: dict) -> pd.DataFrame:
    """Every messages file, validated: `message` must be a non-empty column of each; the other roles are optional,
    per file and per row (a row with none of them is unlinked)."""
    unknown = sorted(set(columns) - set(ROLES))
    if unknown or "message" not in columns:
        raise InputError(f"params.yaml: data.messages_columns maps the roles {', '.join(ROLES)} (message required) "
                         f"to column names; got {sorted(columns)}")
    frames = []
    for f in files:
        optional = {role: col for role, col in columns.items() if role != "message" and col}
        df = read_records(f, {"message": columns["message"]}, optional, key="data.messages")
        df["where"] = f"{f}:" + df["where"].str.rsplit(":", n=1).str[1]  # the path as params.yaml gives it, and the line
        frames.append(df.reindex(columns=["where", *ROLES]))
        log.info("read %d users' messages from %s", len(df), f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["where", *ROLES])


def resolve_links(messages: pd.DataFrame, targets: dict[str, str], has_faq: bool, columns: dict) -> pd.Series:
    """The passage text each message is linked to (answer, FAQ row or passage id), None where it names none or
    only a question. `targets`: served passage id -> text. A link to nothing is an error naming file, line, field."""
    def target(row) -> str | None:
        if isinstance(row.answer, str):
            return row.answer
        for role, value in (("faq_row", row.faq_row), ("passage_id", row.passage_id)):
            if not isinstance(value, str):
                continue
            pid = value if role == "passage_id" else f"faq/{value.removesuffix('.0')}"
            if pid in targets:
                return targets[pid]
            kind = ("a row of data.faq (1-based; 'file stem/row' with several files)" if role == "faq_row" and has_faq
                    else "a served passage id (kb/<stem>#<n> or faq/<row>)")
            raise InputError(f"{row.where}: field '{columns[role]}' {value!r} is not {kind}")
        return None

    return pd.Series([target(r) for r in messages.itertuples()], index=messages.index, dtype=object)


def link_questions(questions: list[str], faq: pd.DataFrame, model, threshold: float, batch_size: int) -> list:
    """The FAQ answer of each plain question: the FAQ row whose question is the same once normalised, else the one
    the base model finds closest when its cosine reaches `threshold`; None otherwise."""
    from sentence_transformers.util import semantic_search

    if not questions or faq.empty:
        return [None] * len(questions)
    by_text = dict(zip(faq["query"].map(normalize), faq["positive"]))
    faq_questions = list(dict.fromkeys(faq["query"]))
    answer_of = dict(zip(faq["query"], faq["positive"]))
    q_emb, f_emb = encode(model, questions, batch_size), encode(model, faq_questions, batch_size)
    hits = semantic_search(q_emb, f_emb, top_k=1)
    out = []
    for q, hit in zip(questions, hits):
        exact = by_text.get(normalize(q))
        close = answer_of[faq_questions[hit[0]["corpus_id"]]] if hit and hit[0]["score"] >= threshold else None
        out.append(exact or close)
    return out


def agreed_labels(messages: list[str], passages: list[str], model, margin: float, batch_size: int,
                  precision: str = "fp32") -> list:
    """The passage both the base model and BM25 put first, when the base model's first leads its second by
    `margin` in cosine; None where they disagree or the lead is smaller."""
    from sentence_transformers.util import semantic_search

    if not messages or len(passages) < 2:
        return [None] * len(messages)
    # the passages through the cache: labelling the questions and then the unlinked messages search the same ones
    dense = semantic_search(encode(model, messages, batch_size, precision),
                            encode_cached(model, passages, batch_size, precision), top_k=2)
    lexical, _ = bm25_index(passages).retrieve(bm25_tokens(messages), k=1, show_progress=False)
    return [passages[d[0]["corpus_id"]] if d[0]["corpus_id"] == int(b[0]) and d[0]["score"] - d[1]["score"] >= margin
            else None for d, b in zip(dense, lexical)]


def question_labels(messages: pd.DataFrame, positive: pd.Series, has_question: pd.Series, targets: dict, model,
                    cfg: dict, precision: str = "fp32") -> tuple[pd.Series, dict]:
    """The passage of each message that names its plain question but reached no passage, labelled from that question
    by agreed_labels: a plain question is the query the labeller is precise on, where the message itself (long,
    personal, several asks) is not. Measured first on the questions of the messages that did reach a passage;
    below prepare.messages.min_label_precision (or fewer than min_labels labelled) no label is kept.

    Why: most logged messages name the question they ask (a support agent's summary, a search's reformulation), few
    the passage that answered; (message, question) pairs teach that the two mean the same, but only (message,
    passage) pairs teach what users are judged on, the passage."""
    batch, margin = int(cfg["batch_size"]), float(cfg["label_margin"])
    todo, checked = has_question & positive.isna(), has_question & positive.notna()
    passages = list(dict.fromkeys(targets.values()))
    labels = agreed_labels(messages.loc[todo, "question"].tolist() + messages.loc[checked, "question"].tolist(),
                           passages, model, margin, batch, precision)
    own, check = labels[: int(todo.sum())], labels[int(todo.sum()):]
    kept = [(lab, truth) for lab, truth in zip(check, positive[checked]) if lab is not None]
    precision = float(np.mean([normalize(a) == normalize(b) for a, b in kept])) if kept else None
    labelled = sum(lab is not None for lab in own)
    counts = {"questions": int(todo.sum()), "labelled": labelled, "check_labelled": len(kept),
              "check_questions": int(checked.sum()), "precision": None if precision is None else round(precision, 4)}
    usable = labelled >= int(cfg["min_labels"]) and precision is not None and precision >= float(cfg["min_label_precision"])
    log.info("messages' questions: %d of %d labelled; on %d questions of linked messages %d labelled, precision %s%s",
             labelled, counts["questions"], counts["check_questions"], len(kept), counts["precision"],
             "" if usable else ": not used (prepare.messages.min_labels, min_label_precision)")
    counts["used"] = labelled if usable else 0
    return pd.Series(own if usable else [None] * len(own), index=messages.index[todo], dtype=object), counts


def repeats(messages: list[str], held_out: list[str], threshold: float) -> np.ndarray:
    """Messages whose words overlap a held-out question's at `threshold` Jaccard or more: a held-out question asked
    again. Word sets as sparse rows, so the overlap of every pair is one sparse product."""
    from scipy.sparse import csr_matrix

    if not messages or not held_out:
        return np.zeros(len(messages), dtype=bool)
    sets = [set(normalize(t).split()) for t in messages + held_out]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*sets)))}
    rows = [i for i, s in enumerate(sets) for _ in s]
    matrix = csr_matrix((np.ones(len(rows)), (rows, [vocab[w] for s in sets for w in s])), shape=(len(sets), len(vocab)))
    a, b = matrix[: len(messages)], matrix[len(messages):]
    inter = (a @ b.T).tocoo()
    sizes_a, sizes_b = np.asarray(a.sum(axis=1)).ravel(), np.asarray(b.sum(axis=1)).ravel()
    jaccard = inter.data / (sizes_a[inter.row] + sizes_b[inter.col] - inter.data)
    hit = np.zeros(len(messages), dtype=bool)
    hit[inter.row[jaccard >= threshold]] = True
    return hit


def message_pairs(messages: pd.DataFrame, sections: list[dict], faq: pd.DataFrame, model, cfg: dict, columns: dict,
                  stats: dict, precision: str = "fp32") -> pd.DataFrame:
    """Training pairs from the users' messages: (message, linked passage), (message, question), and (message,
    agreed label) for the unlinked ones, when the labeller is precise enough on the linked ones. `sections` and
    the FAQ's answers (`faq_id`, the served id) are the passages training may use; a pair on a
    section carries its document's group, so a held-out document's messages can be set aside. `precision`: the
    labeller's encodes (prepare.precision); linking a question to the FAQ's stays fp32, a threshold decision."""
    batch = int(cfg["batch_size"])
    answers = dict(zip(faq["faq_id"], faq["positive"])) if not faq.empty else {}
    targets = {s["id"]: s["text"] for s in sections} | answers
    positive = resolve_links(messages, targets, bool(answers), columns)
    has_question = messages["question"].map(lambda q: isinstance(q, str))
    via_question = pd.Series(link_questions(messages.loc[has_question & positive.isna(), "question"].tolist(), faq,
                                            model, float(cfg["question_link_cosine"]), batch),
                             index=messages.index[has_question & positive.isna()], dtype=object)
    positive = positive.fillna(via_question)
    by_label = pd.Series(dtype=object)
    if cfg.get("label_questions"):
        by_label, counts_q = question_labels(messages, positive, has_question, targets, model, cfg, precision)
    linked = positive.notna() | has_question
    rows = [{"query": m.message, "positive": p, "where": m.where, "kind": kind}
            for series, kind in ((positive, "message"), (by_label, "message_label"))
            for m, p in zip(messages.loc[series.index].itertuples(), series) if isinstance(p, str)]
    if cfg["question_pairs"]:
        rows += [{"query": m.message, "positive": m.question, "where": m.where, "kind": "message_question"}
                 for m in messages[has_question].itertuples()]
    counts = {"linked": int(linked.sum()), "linked_to_a_passage": int(positive.notna().sum()),
              "linked_through_the_question": int(via_question.notna().sum()), "unlinked": int((~linked).sum())}
    if cfg.get("label_questions"):
        counts["question_labels"] = counts_q

    # unlinked: label where the evidence agrees, measured first on the linked messages with their links hidden
    unlinked = messages.loc[~linked, "message"].tolist()
    if unlinked:
        passages = list(dict.fromkeys(targets.values()))
        checked = positive.notna()
        labels = agreed_labels(unlinked + messages.loc[checked, "message"].tolist(), passages, model,
                               float(cfg["label_margin"]), batch, precision)
        own, check = labels[: len(unlinked)], labels[len(unlinked):]
        kept = [(lab, truth) for lab, truth in zip(check, positive[checked]) if lab is not None]
        precision = float(np.mean([normalize(a) == normalize(b) for a, b in kept])) if kept else None
        counts.update({"unlinked_labelled": sum(lab is not None for lab in own),
                       "label_check": {"linked_messages": len(check), "labelled": len(kept),
                                       "precision": None if precision is None else round(precision, 4)}})
        too_few = counts["unlinked_labelled"] < int(cfg["min_labels"])
        too_loose = precision is not None and precision < float(cfg["min_label_precision"])
        if too_few or too_loose:
            log.warning("unlinked messages: %d of %d labelled (%s on the linked ones); %s, so training goes on "
                        "without them (prepare.messages.min_labels, min_label_precision)", counts["unlinked_labelled"],
                        len(unlinked), "precision unmeasured" if precision is None else f"precision {precision:.2f}",
                        "too few" if too_few else "too uncertain")
            counts["unlinked_used"] = 0
        else:
            where = messages.loc[~linked, "where"].tolist()
            rows += [{"query": m, "positive": lab, "where": w, "kind": "message_label"}
                     for m, lab, w in zip(unlinked, own, where) if lab is not None]
            counts["unlinked_used"] = counts["unlinked_labelled"]
        log.info("unlinked messages: %d of %d labelled; the labeller on %d linked messages: %d labelled, precision %s",
                 counts["unlinked_labelled"], len(unlinked), len(check), len(kept), counts["label_check"]["precision"])
    stats["messages"] = counts
    pairs = pd.DataFrame(rows, columns=["query", "positive", "where", "kind"])
    return pairs.assign(group=pairs["positive"].map({s["text"]: kb_document(s) for s in sections}))


def oversample(train: pd.DataFrame, times: int) -> pd.DataFrame:
    """The training pairs of users' messages `times` over (prepare.messages.repeat), the rest once.

    A deployment's messages are few beside its FAQ (MedQuAD: 1,017 against 13,969 pairs, 7%), and at that share the
    FAQ's wording is most of what a batch teaches; repeating them raises their share without dropping FAQ pairs.
    The grouped sampler keeps a text from meeting itself in one batch (pipeline/training/sampler.py)."""
    if times < 1:
        raise InputError(f"params.yaml: prepare.messages.repeat {times!r} is not a whole number >= 1")
    messages = train[train["kind"].isin(MESSAGE_KINDS)]
    return pd.concat([train] + [messages] * (times - 1), ignore_index=True) if times > 1 else train

