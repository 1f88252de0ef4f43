"""prepare, step 4: hard negatives for each training pair, from the base model (sentence-transformers'
mine_hard_negatives), BM25 or both, never from the positive's own group."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from pipeline.params import InputError

log = logging.getLogger("pipeline.prepare")


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


def add_hard_negatives(train: pd.DataFrame, model, cfg: dict, seed: int, stats: dict,
                       precision: str = "fp32") -> pd.DataFrame:
    """Mine negatives with the base model (sentence-transformers), BM25 or both, then drop any from the positive's
    own group.

    mine_hard_negatives returns ranked candidates (with a margin below the positive's score, so paraphrases of
    the positive are not taken); it knows nothing of groups, so we keep the best candidates from *other* groups.
    With both miners, the two ranked lists take turns. A pair with too few gets random passages from other groups
    (seeded, no passage twice) and is counted as missing. When the other groups do not hold `num` distinct passages
    between them, every pair of that group cannot get `num` negatives: InputError (prepare.negatives.num is too large
    for the data), rather than a ragged training file. `precision` (prepare.precision): bf16 encodes the
    candidates under autocast, ~1.9x faster on a CPU with AVX512-BF16; the margin then compares bf16 cosines.
    """
    import torch
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
    # one autocast over both miners' encodes (prepare.precision), as pipeline.retrieval.encode takes it
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
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
