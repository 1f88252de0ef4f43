"""Stage 1, prepare: domain sources -> validated, de-duplicated, leak-free (query, positive, negatives) data.

Reads   params: data.*, model.base, prepare.*; files: data.faq, data.glossary, data.kb (and data.testset)
Writes  data/prepared/train.jsonl        anchor, positive, negative_1..N, group (training tuples; group: the
                                         split component, for train.group_batches)
        data/prepared/val/               BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv): model selection
        data/prepared/val_noisy/         the same validation questions rewritten the way users type
        data/prepared/test/              BEIR folder: the held-out test set (or a copy of data.testset)
        reports/data_stats.json          rows read, dropped and why, pairs per split, negatives found / missing

    python -m pipeline.prepare
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.common import (
    InputError,
    atomic_dir,
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

log = logging.getLogger("pipeline.prepare")
OUT_DIR = Path("data/prepared")
STATS = Path("reports/data_stats.json")
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


def split_groups(groups: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign whole groups to splits, shuffled with the seed, until each split holds its fraction of the rows."""
    rng = np.random.default_rng(seed)
    unique, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(unique))
    split_of_group = np.full(len(unique), "train", dtype=object)
    target = {name: frac * len(groups) for name, frac in fractions.items() if frac > 0}
    filled = dict.fromkeys(target, 0)
    names = list(target)
    i = 0
    for g in order:
        while i < len(names) and filled[names[i]] >= target[names[i]]:
            i += 1
        if i == len(names):
            break
        split_of_group[g] = names[i]
        filled[names[i]] += sizes[g]
    lookup = dict(zip(unique, split_of_group))
    return np.array([lookup[g] for g in groups])


def cap_validation(pairs: pd.DataFrame, max_queries: int, seed: int) -> np.ndarray:
    """Keep whole validation groups up to `max_queries` distinct questions; the rest go back to training.

    Validation runs at every check during training, so it is kept small; the groups it does not need are
    better spent on training (they were never test data, so nothing leaks).
    """
    split = pairs["split"].to_numpy().copy()
    val = pairs[split == "val"]
    questions = val.groupby("group_id")["q_norm"].nunique()
    order = questions.sample(frac=1.0, random_state=seed)
    keep = order.index[(order.cumsum() <= max_queries) | (np.arange(len(order)) == 0)]
    split[(split == "val") & ~pairs["group_id"].isin(set(keep)).to_numpy()] = "train"
    return split


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


# --------------------------------------------------------------------------- 5. noisy queries


def noisy_rewrite(query: str, cfg: dict, rng: np.random.Generator) -> str:
    """Rewrite a clean FAQ question the way people type into a chat box: context, lowercase, typos, a tail."""
    text = query.strip()
    if rng.random() < cfg["p_drop_question_words"]:
        text = re.sub(r"^(what|how|can|is|are|do|does)\b( (is|are|do|does|can|the|a|an))*\s+", "", text, flags=re.I)
    if rng.random() < cfg["p_lowercase"]:
        text = text.lower().rstrip(" ?")
    words = text.split()
    for i, w in enumerate(words):
        if len(w) >= 5 and rng.random() < cfg["typo_rate"]:
            j = int(rng.integers(1, len(w) - 2))
            op = rng.integers(3)
            words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:]) if op == 0 else (w[:j] + w[j + 1:]) if op == 1 else (w[:j] + w[j] + w[j:])
    text = " ".join(words)
    if cfg["contexts"] and rng.random() < cfg["p_context"]:
        text = f"{cfg['contexts'][rng.integers(len(cfg['contexts']))]} {text}"
    if cfg["suffixes"] and rng.random() < cfg["p_suffix"]:
        text = f"{text} {cfg['suffixes'][rng.integers(len(cfg['suffixes']))]}"
    return text


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

    # 2. De-duplicate, group, split (the test set comes from data.testset when it is given)
    pairs = deduplicate(pairs, stats)
    pairs["group_id"] = connected_groups(pairs)
    external_test = data.get("testset")
    fractions = {"val": cfg["val_fraction"]} if external_test else {"test": cfg["test_fraction"], "val": cfg["val_fraction"]}
    pairs["split"] = split_groups(pairs["group_id"].to_numpy(), fractions, seed)
    pairs["split"] = cap_validation(pairs, int(cfg["max_val_queries"]), seed)
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
        stats["rows_read"]["kb_training_pairs"] = len(kb)
        if not kb.empty:
            kb = kb.assign(q_norm=kb["query"].map(normalize), p_norm=kb["positive"].map(normalize), split="train")
            kb["group_id"] = pairs["group_id"].max() + 1 + pd.factorize(kb["group"])[0]
            pairs = pd.concat([pairs, kb], ignore_index=True)
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    val = pairs[pairs["split"] == "val"]
    if external_test:
        test_corpus, test_queries, test_qrels = read_beir(external_test, key="data.testset")
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

    # 3. Leakage guard: no training question may be (nearly) a held-out one
    model = load_model(base, max_seq_length=cfg["max_seq_length"])
    exact, near = leakage_guard(train, list(test_queries.values()) + list(val_queries.values()), model,
                                cfg["leakage_cosine"], cfg["negatives"]["batch_size"])
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

    # 5. Noisy validation queries (rules, seeded; never drawn from the test split)
    rng = np.random.default_rng(seed)
    noisy_queries = {qid: noisy_rewrite(q, cfg["noisy"], rng) for qid, q in val_queries.items()}

    stats["pairs"] = {"train": len(tuples), "train_from_kb_sections": int(train["kind"].isin(KB_KINDS).sum()),
                      "val_queries": len(val_queries), "val_corpus": len(val_corpus),
                      "test_queries": len(test_queries), "test_corpus": len(test_corpus)}
    stats["groups"] = {s: int(pairs.loc[pairs["split"] == s, "group_id"].nunique()) for s in ("train", "val", "test")}
    with atomic_dir(OUT_DIR) as tmp:
        tuples.to_json(tmp / "train.jsonl", orient="records", lines=True, force_ascii=False)
        write_beir(tmp / "val", val_corpus, val_queries, val_qrels)
        write_beir(tmp / "val_noisy", val_corpus, noisy_queries, val_qrels)
        write_beir(tmp / "test", test_corpus, test_queries, test_qrels)
    write_json(STATS, stats)
    log.info("wrote %s (train %d tuples, val %d queries, test %d queries) and %s",
             OUT_DIR, len(tuples), len(val_queries), len(test_queries), STATS)


if __name__ == "__main__":
    run_main(main)
