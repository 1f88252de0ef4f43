"""prepare, steps 2-3: de-duplicate, group into topics, hold out the topics a test set judges, split the rest into
train / validation / test without a question or an answer passage on both sides, and the leakage guard."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.data.kb import topic_key
from pipeline.data.messages import MESSAGE_KINDS
from pipeline.data.readers import beir_passage_texts, normalize

log = logging.getLogger("pipeline.prepare")


def deduplicate(pairs: pd.DataFrame, stats: dict) -> pd.DataFrame:
    """Drop exact duplicate (question, answer) pairs after normalisation, and count them.

    A question asked again with a *different* answer is kept: both answers are relevant, the split keeps
    them together and the no-duplicates batch sampler never puts both in one batch.
    """
    pairs = pairs.assign(q_norm=pairs["query"].map(normalize), p_norm=pairs["positive"].map(normalize))
    dup = pairs.duplicated(["q_norm", "p_norm"])
    stats["dropped"]["duplicate_pair"] = int(dup.sum())
    if dup.any():
        log.info("dropped %d duplicate (question, answer) pairs, e.g. %s", dup.sum(), pairs.loc[dup, "where"].iloc[0])
    pairs = pairs[~dup].reset_index(drop=True)
    stats["repeated_question_other_answer"] = int(pairs.duplicated("q_norm").sum())
    stats["repeated_answer_other_question"] = int(pairs.duplicated("p_norm").sum())
    return pairs


def connected_groups(pairs: pd.DataFrame) -> np.ndarray:
    """Rows that share a normalised question, a normalised answer or a group value end up in one component.

    Splitting by component means no test question and no test answer passage is ever seen in training.
    """
    keys = [("q", pairs["q_norm"]), ("p", pairs["p_norm"])]
    if "group" in pairs:
        keys.append(("g", pairs["group"].fillna(pairs["p_norm"])))
    key_ids = pd.factorize(pd.concat([prefix + ":" + col.astype(str) for prefix, col in keys], ignore_index=True))[0]
    n = len(pairs)
    row_ids = np.tile(np.arange(n), len(keys))
    # bipartite graph rows <-> keys; components of it are the groups
    graph = coo_matrix((np.ones(len(row_ids)), (row_ids, n + key_ids)), shape=(n + key_ids.max() + 1,) * 2)
    return connected_components(graph, directed=False)[1][:n]


def split_groups(groups: np.ndarray, fractions: dict[str, float], seed: int, forced: dict | None = None,
                 eligible: np.ndarray | None = None) -> np.ndarray:
    """Assign whole groups to splits, shuffled with the seed, until each split holds its fraction of the rows.

    `forced` {group: split} assigns groups first (topics of a test set's relevant passages); they count towards
    their split's fraction. Only `eligible` groups (default all) are drawn for the held-out splits.
    """
    rng = np.random.default_rng(seed)
    forced = forced or {}
    unique, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(unique))
    split_of_group = np.array([forced.get(g, "train") for g in unique], dtype=object)
    target = {name: frac * len(groups) for name, frac in fractions.items() if frac > 0}
    filled = {name: int(sizes[split_of_group == name].sum()) for name in target}
    names = list(target)
    allowed = set(unique if eligible is None else eligible) - set(forced)
    i = 0
    for g in order:
        if unique[g] not in allowed:
            continue
        while i < len(names) and filled[names[i]] >= target[names[i]]:
            i += 1
        if i == len(names):
            break
        split_of_group[g] = names[i]
        filled[names[i]] += sizes[g]
    lookup = dict(zip(unique, split_of_group))
    return np.array([lookup[g] for g in groups])


def cap_validation(pairs: pd.DataFrame, max_queries: int, seed: int, held: set | None = None) -> np.ndarray:
    """Keep whole validation groups up to `max_queries` distinct questions; the rest go back to training.

    Validation runs at every check during training, so it is kept small; the groups it does not need are
    better spent on training (they were never test data, so nothing leaks). `held` groups (topics of the user's
    validation questions) are never trained on: those beyond the cap are set aside ("heldout").
    """
    split = pairs["split"].to_numpy().copy()
    val = pairs[split == "val"]
    questions = val.groupby("group_id")["q_norm"].nunique()
    order = questions.sample(frac=1.0, random_state=seed)
    keep = order.index[(order.cumsum() <= max_queries) | (np.arange(len(order)) == 0)]
    dropped = (split == "val") & ~pairs["group_id"].isin(set(keep)).to_numpy()
    held_rows = pairs["group_id"].isin(held or set()).to_numpy()
    split[dropped & ~held_rows] = "train"
    split[dropped & held_rows] = "heldout"
    return split


def split_topics(pairs: pd.DataFrame, fractions: dict[str, float], seed: int, forced: dict,
                 max_val_queries: int) -> list[str]:
    """The split of every row, whole groups at a time. It is drawn on the FAQ, glossary and BEIR rows alone
    (glossary-only topics are training data), and a message takes its topic's split (training where its topic has
    nothing else): adding users' messages never moves the held-out sets."""
    core = pairs[~pairs["kind"].isin(MESSAGE_KINDS)].copy()
    eligible = core.loc[core["kind"] != "glossary", "group_id"].unique()
    core["split"] = split_groups(core["group_id"].to_numpy(), fractions, seed, forced, eligible)
    core["split"] = cap_validation(core, max_val_queries, seed, {g for g, s in forced.items() if s == "val"})
    split_of = dict(zip(core["group_id"], core["split"]))
    return [split_of.get(g, forced.get(g, "train")) for g in pairs["group_id"]]


def set_aside(pairs: pd.DataFrame, held_docs: set[str]) -> pd.Series:
    """The splits with glossary templates and messages of a held-out topic, and messages linked to a held-out
    document, set aside ("heldout"): the held-out sets are the FAQ's own questions, and a held-out topic stays out
    of training."""
    training_only = pairs["kind"].isin(["glossary", *MESSAGE_KINDS])
    aside = training_only & pairs["split"].isin(["test", "val"])
    aside |= pairs["kind"].isin(MESSAGE_KINDS) & pairs["group"].isin(held_docs)
    return pairs["split"].mask(aside, "heldout")


def judged_passages(sets: dict[str, tuple]) -> tuple[set[str], set[str]]:
    """Every passage judged relevant in these BEIR sets {folder: (corpus, queries, qrels)}, what training must never
    see: their normalised texts, and their ids (`kb/<stem>#<n>`, `faq/<row>` name a served passage whatever its
    text is now: a judged section edited after the judging is still held out)."""
    texts, ids = set(), set()
    for folder, (_, _, qrels) in sets.items():
        passages = beir_passage_texts(folder)
        texts |= {normalize(passages[d]) for docs in qrels.values() for d in docs}
        ids |= {d for docs in qrels.values() for d in docs}
    return texts, ids


def held_out_groups(pairs: pd.DataFrame, judged: dict[str, tuple[set[str], set[str]]]) -> dict:
    """{group_id: split} for the groups holding a judged passage, by its text or by its FAQ id (`faq/<row>`): split
    "test" for a test set's, "val" for the validation questions' (test wins). A group is a whole topic: rows joined
    by question, answer or group value."""
    forced = {}
    faq_ids = pairs["faq_id"] if "faq_id" in pairs else pd.Series(None, index=pairs.index)
    for split in ("val", "test"):
        texts, ids = judged[split]
        forced.update(dict.fromkeys(pairs.loc[pairs["p_norm"].isin(texts) | faq_ids.isin(ids), "group_id"], split))
    return forced


def beir_from_pairs(eval_pairs: pd.DataFrame, distractors: list[str], max_corpus: int, seed: int):
    """Queries, corpus (every answer of the split + sampled distractors from other splits) and qrels."""
    answers = list(dict.fromkeys(eval_pairs["positive"]))
    rng = np.random.default_rng(seed)
    others = [d for d in dict.fromkeys(distractors) if d not in set(answers)]
    room = max(0, max_corpus - len(answers))
    if len(others) > room:
        others = [others[i] for i in sorted(rng.choice(len(others), room, replace=False))]
    corpus = {f"d{i}": text for i, text in enumerate(answers + others)}
    doc_id = {text: did for did, text in corpus.items()}
    queries, qrels, query_id = {}, {}, {}
    for q, p in zip(eval_pairs["query"], eval_pairs["positive"]):
        qid = query_id.setdefault(normalize(q), f"q{len(query_id)}")
        queries.setdefault(qid, q)
        qrels.setdefault(qid, {})[doc_id[p]] = 1
    return corpus, queries, qrels


def leakage_guard(train: pd.DataFrame, held_out_queries: list[str], model, threshold: float, batch_size: int):
    """Training rows whose question is (near) a held-out question: same normalised text, or base cosine >= threshold."""
    from sentence_transformers.util import semantic_search

    held_norm = {normalize(q) for q in held_out_queries}
    exact = train["q_norm"].isin(held_norm).to_numpy()
    near = np.zeros(len(train), dtype=bool)
    if threshold is not None and threshold < 1 and len(train) and held_out_queries:
        emb_train = model.encode(train["query"].tolist(), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True, show_progress_bar=True)
        emb_held = model.encode(held_out_queries, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_tensor=True, show_progress_bar=True)
        # each training question's nearest held-out one, in chunks: a full train x held-out matrix is ~40 GB at
        # 1M x 10k
        hits = semantic_search(emb_train, emb_held, top_k=1)
        near = np.array([h[0]["score"] >= threshold for h in hits], dtype=bool)
    return exact, near & ~exact


def beir_topics(pairs: pd.DataFrame, corpus: dict, queries: dict, qrels: dict) -> dict:
    """The topic of each passage and query of a held-out set made from `pairs` (its group: the FAQ's focus, or the
    connected group's number where the FAQ has none), for write_beir. A query not among the pairs (a message written
    from them) takes the topic of its most relevant passage."""
    topic = [topic_key(g) or f"group {i}" for g, i in zip(pairs["group"], pairs["group_id"])]
    by_text = dict(zip(pairs["positive"], topic)) | dict(zip(pairs["query"].map(normalize), topic))
    out = {d: by_text.get(text) for d, text in corpus.items()}
    for q, text in queries.items():
        best = max(qrels.get(q, {}).items(), key=lambda x: x[1], default=(None, 0))[0]
        out[q] = by_text.get(normalize(text)) or out.get(best)
    return out

