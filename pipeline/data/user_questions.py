"""Questions written the way users type them, made from clean FAQ pairs by seeded rules.

Real users do not ask "What are the symptoms of X?". They write a subject line and a message: who they are asking
for, what happened, often two or three questions at once, in lower case with the disease name misspelled. A model
tuned on clean FAQ questions can lose on such messages while it gains on the FAQ's own wording (it happened on
MedQuAD: bench/README.md), so the checkpoint, the merge weight and the recipe are chosen on questions like these
as well, when the user gives no real validation questions of their own.

Each message is built from the questions of one topic (a group of the split: an FAQ focus, a document):
    [subject line.] [context sentence] question one [connector question two] [closing]
and is relevant to the answers of every question it contains, as a real multi-question message is.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.data.readers import normalize

QUESTION_WORDS = re.compile(r"^(what|how|can|is|are|do|does|which|who|when|where|why)\b( (is|are|do|does|can|the|a|an))*\s+",
                            re.I)


def typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip: swap two letters, drop one or double one (never the first letter)."""
    j = int(rng.integers(1, len(word) - 2))
    op = rng.integers(3)
    if op == 0:
        return word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return word[:j] + word[j + 1:] if op == 1 else word[:j] + word[j] + word[j:]


def casual(question: str, cfg: dict, rng: np.random.Generator) -> str:
    """One question as typed into a chat box: maybe lower case without the question mark or the question words,
    with typos in the longer words (the disease names are the long words)."""
    text, rephrased = question.strip(), False
    for pattern, alternatives in cfg.get("rephrase") or []:  # the FAQ's question frames, said the way people say them
        if re.search(pattern, text, flags=re.I) and rng.random() < cfg["p_rephrase"]:
            text = re.sub(pattern, alternatives[int(rng.integers(len(alternatives)))], text, count=1, flags=re.I)
            rephrased = True
            break
    if not rephrased and rng.random() < cfg["p_drop_question_words"]:
        text = QUESTION_WORDS.sub("", text)
    if rng.random() < cfg["p_lowercase"]:
        text = text.lower().rstrip(" ?")
    words = [typo(w, rng) if len(w) >= 6 and rng.random() < cfg["typo_rate"] else w for w in text.split()]
    return " ".join(words)


def topic_name(group) -> str | None:
    """A readable topic from a group value ("canine-parvovirus" -> "canine parvovirus", "kb: bloat.md" -> "bloat");
    None when there is none (a BEIR query's group names a file, not a topic)."""
    if not isinstance(group, str) or not group.strip() or group.startswith("beir: "):
        return None
    name = group.split(": ", 1)[1] if group.startswith(("kb: ", "glossary: ")) else group
    return re.sub(r"[-_]+", " ", re.sub(r"\.(md|markdown|txt)$", "", name)).strip() or None


def message(questions: list[str], name: str | None, cfg: dict, rng: np.random.Generator) -> str:
    """One message holding these questions about one topic (name: the topic, or None)."""
    parts = []
    if name and rng.random() < cfg["p_subject"]:
        parts.append(f"{name if rng.random() < 0.5 else name.lower()}.")
    if name and cfg["contexts"] and rng.random() < cfg["p_context"]:
        parts.append(cfg["contexts"][int(rng.integers(len(cfg["contexts"])))].format(topic=name.lower()))
    body = [casual(q, cfg, rng) for q in questions]
    connectors = cfg["connectors"] or [" "]
    parts.append(body[0] + "".join(connectors[int(rng.integers(len(connectors)))] + b for b in body[1:]))
    if cfg["closings"] and rng.random() < cfg["p_closing"]:
        parts.append(cfg["closings"][int(rng.integers(len(cfg["closings"])))])
    return " ".join(parts)


def user_messages(topics: list[tuple[str | None, list[tuple[str, list[str]]]]], cfg: dict, seed: int):
    """Messages for each topic: (topic name or None, [(question, [relevant passage ids]), ...]).

    Returns [(message, [relevant passage ids])]: `cfg["per_topic"]` per topic, each built from one question, or two
    of the same topic with probability `p_second_question`.
    """
    rng = np.random.default_rng(seed)
    out = []
    for name, questions in topics:
        for _ in range(int(cfg["per_topic"])):
            picked = [questions[int(i)] for i in rng.permutation(len(questions))[:2]]
            if len(picked) == 2 and rng.random() >= cfg["p_second_question"]:
                picked = picked[:1]
            relevant = list(dict.fromkeys(d for _, docs in picked for d in docs))
            out.append((message([q for q, _ in picked], name, cfg, rng), relevant))
    return out


def rewrite_anchors(anchors: list[str], groups: list, fraction: float, cfg: dict, seed: int) -> list[str]:
    """Training questions, a `fraction` of them rewritten as one-question user messages (the rest as they are):
    the model learns that a subject line, a sentence of context or a typo does not change what is asked."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(anchors)) < fraction
    return [message([a], topic_name(g), cfg, rng) if c else a for a, g, c in zip(anchors, groups, chosen)]


def user_style_validation(val: pd.DataFrame, queries: dict, qrels: dict, cfg: dict, seed: int):
    """Validation messages written the way users write, from the validation pairs, topic by topic.

    Relevance is graded as users' questions are judged: the answers of the questions a message holds are relevant
    (2), and so are, less (1), the other answers about its topic. A real user's question is usually answered by a
    page about the subject, not only by the one FAQ entry it paraphrases, and a model that has learned to match the
    FAQ's question frame ("What causes ...") over the subject loses here as it loses on real questions
    (bench/README.md).
    """
    group_of = dict(zip(val["q_norm"], zip(val["group_id"], val["group"])))
    topics: dict = {}
    for qid, text in queries.items():
        gid, name = group_of[normalize(text)]
        topics.setdefault(gid, (topic_name(name), []))[1].append((text, list(qrels[qid])))
    messages = user_messages(list(topics.values()), cfg, seed)  # per_topic messages for each topic, in order
    # a list, not a set: the qrels' order names a message's topic (pipeline.data.split.beir_topics takes the first
    # passage of the highest grade), and a set of strings is ordered anew by each process's hash seed
    topic_of = [list(dict.fromkeys(d for _, docs in questions for d in docs)) for _, questions in topics.values()
                for _ in range(int(cfg["per_topic"]))]
    return ({f"u{i}": text for i, (text, _) in enumerate(messages)},
            {f"u{i}": {**dict.fromkeys(about, 1), **dict.fromkeys(docs, 2)}
             for i, ((_, docs), about) in enumerate(zip(messages, topic_of))})
