"""prepare: templates, de-duplication, grouping and a split that never leaks, negatives, noisy rewrites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.common import ROOT, InputError
from pipeline.prepare import (
    add_hard_negatives,
    beir_from_pairs,
    connected_groups,
    deduplicate,
    expand_glossary,
    normalize,
    noisy_rewrite,
    read_faq,
    split_groups,
)

COLUMNS = {"question": "question", "answer": "answer", "group": "focus"}


def frame(rows):
    return pd.DataFrame(rows, columns=["query", "positive", "group"]).assign(where="t", kind="faq")


def test_glossary_templates_expand_each_row(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("term,definition\nFeLV,A retrovirus of cats.\nBloat,Gas in the rumen.\n", encoding="utf-8")
    df = expand_glossary([str(f)], {"term": "term", "definition": "definition"}, ["What is {term}?", "Define {term}."])
    assert sorted(df["query"]) == ["Define Bloat.", "Define FeLV.", "What is Bloat?", "What is FeLV?"]
    assert set(df.loc[df["query"] == "Define FeLV.", "positive"]) == {"A retrovirus of cats."}
    assert df.groupby("group")["positive"].nunique().max() == 1  # one group per term
    with pytest.raises(InputError, match="no {term} placeholder"):
        expand_glossary([str(f)], {"term": "term", "definition": "definition"}, ["What is it?"])


def test_deduplicate_drops_repeated_pairs_and_counts_them():
    stats = {"dropped": {}}
    pairs = deduplicate(frame([("What is parvo?", "A virus.", "p"), ("what is PARVO", "A virus", "p"),
                               ("What is parvo?", "Another answer.", "p"), ("Define parvo", "A virus.", "p")]), stats)
    assert len(pairs) == 3 and stats["dropped"]["duplicate_pair"] == 1
    assert stats["repeated_question_other_answer"] == 1 and stats["repeated_answer_other_question"] == 1


def test_groups_join_rows_sharing_question_answer_or_group():
    pairs = frame([("q1", "a1", None), ("q1", "a2", None),   # same question
                   ("q3", "a2", None),                       # same answer as row 1
                   ("q4", "a4", "x"), ("q5", "a5", "x"),     # same group value
                   ("q6", "a6", None)])
    pairs = pairs.assign(q_norm=pairs["query"].map(normalize), p_norm=pairs["positive"].map(normalize))
    g = connected_groups(pairs)
    assert g[0] == g[1] == g[2] and g[3] == g[4] and len({g[0], g[3], g[5]}) == 3


def test_bundled_split_never_leaks_a_test_question_or_answer_into_training():
    faq = read_faq([str(ROOT / "data/raw/faq.csv")], COLUMNS)
    pairs = deduplicate(faq.assign(kind="faq"), {"dropped": {}})
    pairs["group_id"] = connected_groups(pairs)
    pairs["split"] = split_groups(pairs["group_id"].to_numpy(), {"test": 0.2, "val": 0.1}, seed=1)
    train, test = pairs[pairs["split"] == "train"], pairs[pairs["split"] == "test"]
    assert 0.15 < len(test) / len(pairs) < 0.3
    assert not set(train["q_norm"]) & set(test["q_norm"])
    assert not set(train["p_norm"]) & set(test["p_norm"])
    assert not set(train["group"]) & set(test["group"])  # whole foci are held out
    again = split_groups(pairs["group_id"].to_numpy(), {"test": 0.2, "val": 0.1}, seed=1)
    assert (again == pairs["split"].to_numpy()).all()  # seeded


def test_beir_from_pairs_merges_repeated_questions_and_caps_the_corpus():
    test = pd.DataFrame({"query": ["What is X?", "what is x", "Why Y?"], "positive": ["ax1", "ax2", "ay"]})
    corpus, queries, qrels = beir_from_pairs(test, [f"other {i}" for i in range(10)], max_corpus=5, seed=0)
    assert len(corpus) == 5 and {"ax1", "ax2", "ay"} <= set(corpus.values())
    assert len(queries) == 2
    (qx,) = [q for q, t in queries.items() if t == "What is X?"]
    assert {corpus[d] for d in qrels[qx]} == {"ax1", "ax2"}


def test_hard_negatives_never_come_from_the_positive_group(tiny_model):
    from pipeline.common import load_model

    rows = []
    for g in range(6):
        for i in range(4):
            rows.append({"query": f"question {i} about topic {g}", "positive": f"answer {i} on topic {g} text",
                         "group_id": g})
    train = pd.DataFrame(rows)
    stats = {}
    cfg = {"num": 2, "candidates": 10, "range_max": 20, "relative_margin": None, "absolute_margin": None,
           "batch_size": 32}
    tuples = add_hard_negatives(train, load_model(tiny_model, device="cpu"), cfg, seed=0, stats=stats)
    group_of = dict(zip(train["positive"], train["group_id"]))
    assert list(tuples.columns) == ["anchor", "positive", "negative_1", "negative_2"]
    assert len(tuples) == len(train)
    for r in tuples.itertuples():
        assert group_of[r.negative_1] != group_of[r.positive] and group_of[r.negative_2] != group_of[r.positive]
        assert r.negative_1 != r.negative_2
    assert stats["negatives"]["pairs_with_all_hard_negatives"] + stats["negatives"]["pairs_missing_hard_negatives"] == 24


def test_noisy_rewrite_is_seeded_and_noisy():
    cfg = {"p_context": 1.0, "p_suffix": 1.0, "p_lowercase": 1.0, "p_drop_question_words": 0.0, "typo_rate": 0.5,
           "contexts": ["my dog is sick."], "suffixes": ["thanks"]}
    q = "What are the clinical signs of canine distemper?"
    a = noisy_rewrite(q, cfg, np.random.default_rng(3))
    assert a == noisy_rewrite(q, cfg, np.random.default_rng(3))
    assert a.startswith("my dog is sick. ") and a.endswith(" thanks") and "?" not in a
    assert a != "my dog is sick. what are the clinical signs of canine distemper thanks"  # typos happened
