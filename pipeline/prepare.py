"""Stage 1, prepare: domain sources -> validated, de-duplicated, leak-free (query, positive, negatives) data.

Reads   params: data.*, model.base, prepare.*; files: data.faq, data.glossary, data.kb, data.testset,
        data.testsets, data.val_questions
Writes  data/prepared/train.jsonl        anchor, positive, negative_1..N, group (training tuples; group: the
                                         split component, for train.group_batches)
        data/prepared/val/               BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv): FAQ-style validation
        data/prepared/val_users/         validation questions as users write them: data.val_questions, or messages
                                         made from the validation pairs (pipeline/user_questions.py)
        data/prepared/test/              BEIR folder: the held-out FAQ split (or a copy of data.testset)
        data/prepared/testsets/<name>/   each named test set of data.testsets, validated
        reports/data_stats.json          rows read, dropped and why, pairs per split, negatives found / missing

Every passage judged relevant in a test set or in data.val_questions is held out with its whole topic: the FAQ
group (and the glossary rows sharing its group value) goes to the test or validation split, and the knowledge-base
document that holds it is not trained on.

    python -m pipeline.prepare
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.common import (
    InputError,
    atomic_dir,
    beir_passage_texts,
    load_model,
    load_params,
    normalize,
    read_beir,
    read_kb,
    read_records,
    repo_path,
    run_main,
    write_beir,
    write_json,
)
from pipeline.user_questions import topic_name, user_messages

log = logging.getLogger("pipeline.prepare")
OUT_DIR = Path("data/prepared")
STATS = Path("reports/data_stats.json")
RESERVED = ("test", "val", "val_users")  # names of the prepared sets, not free for data.testsets
KB_KINDS = ("kb", "synthetic")  # pairs made from data.kb sections: training only, never test or validation passages


# --------------------------------------------------------------------------- 1. sources -> pairs


def read_faq(files: list[str], columns: dict) -> pd.DataFrame:
    frames = []
    for f in files:
        optional = {"group": columns["group"]} if columns.get("group") else {}
        df = read_records(f, {"query": columns["question"], "positive": columns["answer"]}, optional, key="data.faq")
        df["kind"] = "faq"
        frames.append(df)
        log.info("read %d FAQ rows from %s", len(df), f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_beir_pairs(folders: list[str]) -> pd.DataFrame:
    """Training pairs from BEIR folders (queries, qrels, corpus): one pair per relevant passage of each query.

    A query's relevant passages share a group, so a query never straddles the split.
    """
    rows = []
    for folder in folders:
        corpus, queries, qrels = read_beir(folder, key="data.beir_train")
        rows += [{"query": queries[q], "positive": corpus[d], "group": f"beir: {folder}#{q}", "where": f"{folder}#{q}"}
                 for q, docs in qrels.items() for d in docs]
        log.info("read %d pairs from BEIR folder %s", len(rows), folder)
    return pd.DataFrame(rows).assign(kind="beir") if rows else pd.DataFrame()


def expand_glossary(files: list[str], columns: dict, templates: list[str]) -> pd.DataFrame:
    """Each glossary row becomes one query per template ("What is {term}?") with the definition as positive."""
    for t in templates:
        if "{term}" not in t:
            raise InputError(f"params.yaml: prepare.glossary_templates entry {t!r} has no {{term}} placeholder")
    frames = []
    for f in files:
        df = read_records(f, {"term": columns["term"], "positive": columns["definition"]}, key="data.glossary")
        log.info("read %d glossary rows from %s", len(df), f)
        for t in templates:
            frames.append(df.assign(query=[t.format(term=term) for term in df["term"]], group="glossary: " + df["term"]))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop(columns="term").assign(kind="glossary")


def kb_heading_pairs(passages: list[dict]) -> pd.DataFrame:
    """(title + heading, section) training pairs: documents without questions still teach the domain."""
    rows = [
        {"query": f"{p['title']}: {p['heading']}", "positive": p["text"], "group": "kb: " + p["source"].split("#")[0],
         "where": p["source"], "kind": "kb"}
        for p in passages
        if p["heading"] and p["heading"] != p["title"]
    ]
    return pd.DataFrame(rows)


def synthetic_pairs(passages: list[dict], cfg: dict, seed: int) -> pd.DataFrame:
    """(generated question, section) pairs from a seq2seq query-generation model (doc2query style) at a local path.

    For documents that come without questions. Off unless prepare.synthetic_queries.model is set.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, set_seed

    path = repo_path(cfg["model"])
    if not path.is_dir():
        raise InputError(f"params.yaml: prepare.synthetic_queries.model {cfg['model']!r} is not a local folder")
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    n, size = int(cfg["per_passage"]), int(cfg["batch_size"])
    rows = []
    for start in tqdm(range(0, len(passages), size), desc="generating queries"):
        batch = passages[start:start + size]
        inputs = tokenizer([p["text"] for p in batch], truncation=True, max_length=int(cfg["max_input_length"]),
                           padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], do_sample=True, top_p=0.95, num_return_sequences=n,
                                 max_new_tokens=int(cfg["max_new_tokens"]))
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        for i, p in enumerate(batch):
            for q in dict.fromkeys(t.strip() for t in texts[i * n:(i + 1) * n]):
                if q:
                    rows.append({"query": q, "positive": p["text"], "group": "kb: " + p["source"].split("#")[0],
                                 "where": p["source"], "kind": "synthetic"})
    log.info("generated %d queries for %d passages with %s", len(rows), len(passages), path)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 2. de-duplicate and group


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


def judged_passages(sets: dict[str, tuple]) -> set[str]:
    """Normalised text of every passage judged relevant in these BEIR sets {folder: (corpus, queries, qrels)}:
    what training must never see."""
    texts = set()
    for folder, (_, _, qrels) in sets.items():
        passages = beir_passage_texts(folder)
        texts |= {normalize(passages[d]) for docs in qrels.values() for d in docs}
    return texts


def held_out_groups(pairs: pd.DataFrame, judged: dict[str, set[str]]) -> dict:
    """{group_id: split} for the groups holding a judged passage: split "test" for a test set's, "val" for the
    validation questions' (test wins). A group is a whole topic: rows joined by question, answer or group value."""
    forced = {}
    for split in ("val", "test"):
        forced.update(dict.fromkeys(pairs.loc[pairs["p_norm"].isin(judged[split]), "group_id"], split))
    return forced


def user_style_validation(val: pd.DataFrame, queries: dict, qrels: dict, cfg: dict, seed: int):
    """Validation messages written the way users write (pipeline/user_questions.py) from the validation pairs,
    topic by topic, relevant to the answers of every question they contain."""
    group_of = dict(zip(val["q_norm"], zip(val["group_id"], val["group"])))
    topics: dict = {}
    for qid, text in queries.items():
        gid, name = group_of[normalize(text)]
        topics.setdefault(gid, (topic_name(name), []))[1].append((text, list(qrels[qid])))
    messages = user_messages(list(topics.values()), cfg, seed)
    return ({f"u{i}": text for i, (text, _) in enumerate(messages)},
            {f"u{i}": dict.fromkeys(docs, 1) for i, (_, docs) in enumerate(messages)})


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


# --------------------------------------------------------------------------- 3. leakage guard


def leakage_guard(train: pd.DataFrame, held_out_queries: list[str], model, threshold: float, batch_size: int):
    """Training rows whose question is (near) a held-out question: same normalised text, or base cosine >= threshold."""
    held_norm = {normalize(q) for q in held_out_queries}
    exact = train["q_norm"].isin(held_norm).to_numpy()
    near = np.zeros(len(train), dtype=bool)
    if threshold is not None and threshold < 1 and len(train) and held_out_queries:
        emb_train = model.encode(train["query"].tolist(), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True, show_progress_bar=True)
        emb_held = model.encode(held_out_queries, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_tensor=True, show_progress_bar=True)
        near = (emb_train @ emb_held.T).max(dim=1).values.cpu().numpy() >= threshold
    return exact, near & ~exact


# --------------------------------------------------------------------------- 4. hard negatives


def bm25_candidates(train: pd.DataFrame, model, cfg: dict) -> tuple[dict, dict]:
    """Each pair's top BM25 passages (bm25s, as the BM25 baseline), scored by the base model for the margin.

    Lexical neighbours are what a keyword search confuses with the answer: another disease's page with the same
    words. The margin is applied on the base model's cosine, as for the model's own candidates, so a passage that
    means the same as the positive is not taken however BM25 ranked it. (With miner `both` the passages are encoded
    a second time: mine_hard_negatives does not hand back its embeddings.)
    """
    from pipeline.retrieval import bm25_run, ranked

    passages = list(dict.fromkeys(train["positive"]))
    row_ids = [str(i) for i in range(len(train))]
    run = bm25_run({str(i): p for i, p in enumerate(passages)}, dict(zip(row_ids, train["query"])),
                   int(cfg["range_max"]))
    encode = dict(batch_size=int(cfg["batch_size"]), normalize_embeddings=True, convert_to_numpy=True)
    passage_vectors = model.encode(passages, **encode)
    anchor_vectors = model.encode(train["query"].tolist(), **encode)
    position = {p: i for i, p in enumerate(passages)}
    found, positive_scores = {}, {}
    for row, anchor, positive in zip(row_ids, train["query"], train["positive"]):
        vector = anchor_vectors[int(row)]
        positive_scores[(anchor, positive)] = float(vector @ passage_vectors[position[positive]])
        candidates = [(passages[int(d)], float(vector @ passage_vectors[int(d)])) for d in ranked(run[row])]
        found[(anchor, positive)] = [(d, s) for d, s in candidates if d != positive and within_margin(
            s, positive_scores[(anchor, positive)], cfg)][: int(cfg["candidates"])]
    return found, positive_scores


def within_margin(score: float, positive_score: float, cfg: dict) -> bool:
    """mine_hard_negatives' margins: a candidate must score below the positive by this much to be a negative."""
    if cfg.get("absolute_margin") is not None and score > positive_score - float(cfg["absolute_margin"]):
        return False
    if cfg.get("relative_margin") is not None and score > positive_score * (1 - float(cfg["relative_margin"])):
        return False
    return True


def add_hard_negatives(train: pd.DataFrame, model, cfg: dict, seed: int, stats: dict) -> pd.DataFrame:
    """Mine negatives with the base model (sentence-transformers), BM25 or both, then drop any from the positive's
    own group.

    mine_hard_negatives returns ranked candidates (with a margin below the positive's score, so paraphrases of
    the positive are not taken); it knows nothing of groups, so we keep the best candidates from *other* groups.
    With both miners, the two ranked lists take turns. A pair with too few gets random passages from other groups
    (seeded, no passage twice) and is counted as missing. When the other groups do not hold `num` distinct passages
    between them, every pair of that group cannot get `num` negatives: InputError (prepare.negatives.num is too large
    for the data), rather than a ragged training file.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    num, miner = int(cfg["num"]), cfg["miner"]
    if miner not in ("model", "bm25", "both"):
        raise InputError(f"params.yaml: prepare.negatives.miner {miner!r} is not one of model, bm25, both")
    if num == 0:
        stats["negatives"] = {"per_pair": 0}
        return train[["query", "positive", "group_id"]].rename(columns={"query": "anchor", "group_id": "group"})
    group_of = dict(zip(train["positive"], train["group_id"]))
    candidates: list[dict[tuple[str, str], list[tuple[str, float]]]] = []
    positive_scores: dict[tuple[str, str], float] = {}
    if miner in ("model", "both"):
        dataset = Dataset.from_dict({"anchor": train["query"].tolist(), "positive": train["positive"].tolist()})
        mined = mine_hard_negatives(
            dataset, model, range_max=int(cfg["range_max"]), num_negatives=int(cfg["candidates"]),
            relative_margin=cfg.get("relative_margin"), absolute_margin=cfg.get("absolute_margin"),
            sampling_strategy="top", output_format="labeled-list", output_scores=True,
            batch_size=int(cfg["batch_size"]), use_faiss=False, verbose=True,
        )
        by_model = {}
        for anchor, docs, scores in zip(mined["anchor"], mined["positive"], mined["scores"]):
            by_model[(anchor, docs[0])] = list(zip(docs[1:], scores[1:]))
            positive_scores[(anchor, docs[0])] = scores[0]
        candidates.append(by_model)
    if miner in ("bm25", "both"):
        by_bm25, bm25_positive_scores = bm25_candidates(train, model, cfg)
        candidates.append(by_bm25)
        positive_scores = positive_scores or bm25_positive_scores
    found: dict[tuple[str, str], tuple[list[str], list[float], float | None]] = {}
    for key in zip(train["query"], train["positive"]):
        lists = [c.get(key, []) for c in candidates]
        merged = [pair for turn in itertools.zip_longest(*lists) for pair in turn if pair is not None]
        kept = list({d: s for d, s in merged if group_of.get(d) != group_of[key[1]]}.items())[:num]
        found[key] = ([d for d, _ in kept], [s for _, s in kept], positive_scores.get(key))
    rng = np.random.default_rng(seed)
    passages = train["positive"].to_numpy()
    passages_in_group = pd.Series(group_of).value_counts()  # distinct passages per group
    rows, missing, pos_scores, neg_scores = [], 0, [], []
    for anchor, positive, gid in zip(train["query"], train["positive"], train["group_id"]):
        negs, neg_s, pos_s = found.get((anchor, positive), ([], [], None))
        if pos_s is not None:
            pos_scores.append(pos_s)
            neg_scores += neg_s[:1]
        if len(negs) < num:
            missing += 1
            outside = len(group_of) - int(passages_in_group.get(gid, 0))
            if outside - sum(group_of.get(n, gid) != gid for n in negs) < num - len(negs):
                raise InputError(f"params.yaml: prepare.negatives.num {num} is too large for the data: {outside} "
                                 f"passages outside the group of the training pair {anchor!r}")
            while len(negs) < num:  # random fill from another group: still a valid (easy) negative
                cand = passages[rng.integers(len(passages))]
                if group_of[cand] != gid and cand not in negs:
                    negs.append(cand)
        rows.append({"anchor": anchor, "positive": positive, **{f"negative_{i + 1}": n for i, n in enumerate(negs)},
                     "group": gid})
    describe = lambda xs: {k: round(float(v), 4) for k, v in pd.Series(xs, dtype=float).describe().items() if k != "count"}
    stats["negatives"] = {
        "per_pair": num,
        "pairs_with_all_hard_negatives": len(rows) - missing,
        "pairs_missing_hard_negatives": missing,
        "positive_score": describe(pos_scores),
        "hardest_negative_score": describe(neg_scores),
    }
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- main


def main() -> None:
    data, cfg = load_params("data"), load_params("prepare")
    base = load_params("model")["base"]
    seed = int(cfg["seed"])
    stats: dict = {"rows_read": {}, "dropped": {}}

    # 1. Read and validate every source (fails on the first bad file, naming file, line and field)
    faq = read_faq(data.get("faq") or [], data["faq_columns"])
    glossary = expand_glossary(data.get("glossary") or [], data["glossary_columns"], cfg["glossary_templates"])
    beir = read_beir_pairs(data.get("beir_train") or [])
    stats["rows_read"] = {"faq": len(faq), "glossary_queries": len(glossary), "beir_pairs": len(beir)}
    pairs = pd.concat([faq, glossary, beir], ignore_index=True)
    if pairs.empty:
        raise InputError("params.yaml: data.faq, data.glossary and data.beir_train give no question/answer pairs")
    if "group" not in pairs:
        pairs["group"] = None
    testsets = data.get("testsets") or {}
    if not isinstance(testsets, dict) or any(not re.fullmatch(r"[A-Za-z0-9_-]+", str(n)) or n in RESERVED
                                             for n in testsets):
        raise InputError("params.yaml: data.testsets must map names (letters, digits, _ and -; not "
                         f"{', '.join(RESERVED)}) to BEIR folders")
    external_test, val_questions = data.get("testset"), data.get("val_questions")

    # 2. De-duplicate, group, and hold out every topic with a passage judged in a test set or the validation
    #    questions; then split the rest (the test split comes from data.testset when it is given)
    pairs = deduplicate(pairs, stats)
    pairs["group_id"] = connected_groups(pairs)
    held_keys = {**{f: f"data.testsets.{n}" for n, f in testsets.items()}, external_test: "data.testset",
                 val_questions: "data.val_questions"}
    held_sets = {folder: read_beir(folder, key=key) for folder, key in held_keys.items() if folder}
    judged = {"test": judged_passages({f: held_sets[f] for f in [*testsets.values(), external_test] if f}),
              "val": judged_passages({f: held_sets[f] for f in [val_questions] if f})}
    forced = held_out_groups(pairs, judged)
    if external_test:  # the test set is given: topics it judges are only kept out of training
        forced = {g: "heldout" if s == "test" else s for g, s in forced.items()}
    fractions = {"val": cfg["val_fraction"]} if external_test else {"test": cfg["test_fraction"], "val": cfg["val_fraction"]}
    eligible = pairs.loc[pairs["kind"] != "glossary", "group_id"].unique()  # glossary-only topics: training data
    pairs["split"] = split_groups(pairs["group_id"].to_numpy(), fractions, seed, forced, eligible)
    pairs["split"] = cap_validation(pairs, int(cfg["max_val_queries"]), seed,
                                    {g for g, s in forced.items() if s == "val"})
    # glossary templates ("What is X?") of a held-out topic are set aside, not scored: they are not real questions
    pairs.loc[(pairs["kind"] == "glossary") & pairs["split"].isin(["test", "val"]), "split"] = "heldout"
    stats["held_out"] = {"topics_with_judged_passages": len(forced),
                         "rows_set_aside": int((pairs["split"] == "heldout").sum())}
    synthetic_model = (cfg.get("synthetic_queries") or {}).get("model")
    if cfg.get("kb_pairs") or synthetic_model:
        if external_test and repo_path(data["kb"]).resolve().is_relative_to(repo_path(external_test).resolve()):
            raise InputError(f"params.yaml: data.kb ({data['kb']}) is inside data.testset: training on its passages "
                             "would leak the test corpus; set prepare.kb_pairs false and synthetic_queries.model null")
        passages = read_kb(data["kb"])
        kb = kb_heading_pairs(passages) if cfg.get("kb_pairs") else pd.DataFrame()
        if synthetic_model:
            kb = pd.concat([kb, synthetic_pairs(passages, cfg["synthetic_queries"], seed)], ignore_index=True)
        stats["rows_read"]["kb_sections"] = len(passages)
        if not kb.empty:  # a document holding a judged passage is held out whole
            held_docs = set(kb.loc[kb["positive"].map(normalize).isin(judged["test"] | judged["val"]), "group"])
            kb = kb[~kb["group"].isin(held_docs)]
            stats["held_out"]["kb_documents"] = len(held_docs)
        stats["rows_read"]["kb_training_pairs"] = len(kb)
        if not kb.empty:
            kb = kb.assign(q_norm=kb["query"].map(normalize), p_norm=kb["positive"].map(normalize), split="train")
            kb["group_id"] = pairs["group_id"].max() + 1 + pd.factorize(kb["group"])[0]
            pairs = pd.concat([pairs, kb], ignore_index=True)
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    val = pairs[pairs["split"] == "val"]
    if external_test:
        test_corpus, test_queries, test_qrels = held_sets[external_test]
        log.info("test set from %s: %d queries, %d passages", external_test, len(test_queries), len(test_corpus))
    else:
        test = pairs[pairs["split"] == "test"]
        if test.empty:
            raise InputError("prepare.test_fraction gives an empty test split: add data or raise the fraction")
        test_corpus, test_queries, test_qrels = beir_from_pairs(
            test, pairs.loc[~pairs["kind"].isin(KB_KINDS), "positive"].tolist(), cfg["eval_corpus_size"], seed)
    if val.empty:
        raise InputError("prepare.val_fraction gives an empty validation split: add data or raise the fraction")
    val_corpus, val_queries, val_qrels = beir_from_pairs(
        val, train.loc[~train["kind"].isin(KB_KINDS), "positive"].tolist(), cfg["val_corpus_size"], seed)
    held_out_queries = [q for _, queries, _ in held_sets.values() for q in queries.values()]
    held_out_queries += list(test_queries.values()) * (not external_test) + list(val_queries.values())

    # 3. Leakage guard: no training question may be (nearly) a held-out one
    model = load_model(base, max_seq_length=cfg["max_seq_length"])
    exact, near = leakage_guard(train, held_out_queries, model, cfg["leakage_cosine"], cfg["negatives"]["batch_size"])
    stats["dropped"]["leak_exact_question"] = int(exact.sum())
    stats["dropped"]["leak_near_duplicate_question"] = int(near.sum())
    if (exact | near).any():
        log.info("leakage guard dropped %d training pairs (%d exact, %d near-duplicate questions)",
                 (exact | near).sum(), exact.sum(), near.sum())
    train = train[~(exact | near)].reset_index(drop=True)
    if cfg.get("max_train_pairs"):
        train = train.sample(min(len(train), int(cfg["max_train_pairs"])), random_state=seed).reset_index(drop=True)
    if train.empty:
        raise InputError("no training pairs left after splitting and the leakage guard")

    # 4. Hard negatives from the base model and/or BM25, never from the positive's own group
    tuples = add_hard_negatives(train, model, cfg["negatives"], seed, stats)

    # 5. Validation questions as users write them: the user's own, or messages made from the validation pairs
    if val_questions:
        users = held_sets[val_questions]
    else:
        users = (val_corpus, *user_style_validation(val, val_queries, val_qrels, cfg["user_questions"], seed))

    stats["pairs"] = {"train": len(tuples), "train_from_kb_sections": int(train["kind"].isin(KB_KINDS).sum()),
                      "train_by_source": {k: int(v) for k, v in train["kind"].value_counts().items()},
                      "val_queries": len(val_queries), "val_corpus": len(val_corpus),
                      "val_users_queries": len(users[1]), "val_users_source": val_questions or "generated",
                      "test_queries": len(test_queries), "test_corpus": len(test_corpus)}
    stats["groups"] = {s: int(pairs.loc[pairs["split"] == s, "group_id"].nunique()) for s in ("train", "val", "test")}
    with atomic_dir(OUT_DIR) as tmp:
        tuples.to_json(tmp / "train.jsonl", orient="records", lines=True, force_ascii=False)
        write_beir(tmp / "val", val_corpus, val_queries, val_qrels)
        write_beir(tmp / "val_users", *users)
        write_beir(tmp / "test", test_corpus, test_queries, test_qrels)
        (tmp / "testsets").mkdir()
        for name, folder in testsets.items():  # copied as they are: titles and query topics kept
            (tmp / "testsets" / name).mkdir()
            for file in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
                shutil.copy(repo_path(folder) / file, tmp / "testsets" / name / file)
            stats["pairs"][f"testset_{name}_queries"] = len(held_sets[folder][1])
    write_json(STATS, stats)
    log.info("wrote %s (train %d tuples, val %d queries, test %d queries, %d named test sets) and %s",
             OUT_DIR, len(tuples), len(val_queries), len(test_queries), len(testsets), STATS)


if __name__ == "__main__":
    run_main(main)
