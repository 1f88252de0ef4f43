"""Users' messages (data.messages): read and validated, linked or labelled, trained on beside the FAQ, and kept
out of every held-out topic."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from pipeline.data.messages import read_messages, repeats, resolve_links
from pipeline.data.readers import normalize
from pipeline.params import InputError
from tests.conftest import ROOT

COLUMNS = {"message": "message", "question": "question", "faq_row": "faq_row", "passage_id": "passage_id"}


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_each_file_has_its_own_roles_and_a_row_without_a_link_is_unlinked(tmp_path):
    linked = write(tmp_path / "linked.csv", "message,passage_id\nmy dog coughs,kb/a#1\nflea meds for kittens,\n")
    log = write(tmp_path / "log.jsonl", '{"message": "cat not eating"}\n{"message": "who makes x", "question": "Who makes x?"}\n')
    df = read_messages([linked, log], COLUMNS)
    assert df["message"].tolist() == ["my dog coughs", "flea meds for kittens", "cat not eating", "who makes x"]
    assert df["passage_id"].tolist()[:2] == ["kb/a#1", None] or pd.isna(df["passage_id"].iloc[1])
    assert df["question"].iloc[3] == "Who makes x?" and pd.isna(df["question"].iloc[0])
    positive = resolve_links(df, {"kb/a#1": "Kennel text."}, True, COLUMNS)
    assert positive.iloc[0] == "Kennel text." and positive.iloc[1:].isna().all()


@pytest.mark.parametrize("content, columns, message", [
    ("message,passage_id\nhello,kb/a#1\n,kb/a#1\n", COLUMNS, "m.csv:3: field 'message' is empty"),
    ("text\nhello\n", COLUMNS, "m.csv:1: missing column(s) ['message']"),
    ("message,passage_id\nhello,kb/nope#9\n", COLUMNS, "m.csv:2: field 'passage_id' 'kb/nope#9' is not a served passage id"),
    ("message,faq_row\nhello,999\n", COLUMNS, "m.csv:2: field 'faq_row' '999' is not a row of data.faq"),
    ("message\nhello\n", {"message": "message", "topic": "t"}, "data.messages_columns maps the roles"),
])
def test_a_bad_messages_file_fails_naming_file_line_and_field(tmp_path, content, columns, message):
    path = write(tmp_path / "m.csv", content)
    with pytest.raises(InputError, match=re.escape(message)):
        df = read_messages([path], columns)
        resolve_links(df, {"kb/a#1": "text", "faq/1": "answer"}, True, columns)


def test_a_message_that_repeats_a_held_out_question_is_found_by_word_overlap():
    held = ["my puppy has bloody diarrhea and keeps vomiting what do i do"]
    messages = ["My puppy has bloody diarrhea and keeps vomiting, what do I do??",  # the same words
                "puppy vomiting",                                                   # shares words, not the question
                "how often should kittens be vaccinated"]
    assert repeats(messages, held, 0.66).tolist() == [True, False, False]
    assert repeats([], held, 0.66).tolist() == [] and repeats(messages, [], 0.66).tolist() == [False] * 3


def bundled_prepare(tmp_path, monkeypatch, tiny_model, overrides: dict | None = None):
    from pipeline.params import load_params, set_params
    from pipeline.stages import prepare

    shutil.copytree(ROOT / "data/raw", tmp_path / "data/raw")
    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "prepare.leakage_cosine": None, "prepare.max_seq_length": 32, **(overrides or {})})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    prepare.main()
    rows = [json.loads(line) for line in (tmp_path / "data/prepared/train.jsonl").read_text().splitlines()]
    return rows, json.loads((tmp_path / "reports/data_stats.json").read_text())


def test_bundled_messages_are_trained_on_except_those_of_held_out_topics(tmp_path, monkeypatch, tiny_model):
    """The bundled pet owners' messages join training as (message, passage) pairs; those linked to a topic the FAQ
    split holds out (feline leukemia virus, rabies) or to a held-out document stay out, and adding the messages
    leaves the held-out sets as they were."""
    from pipeline.data.kb import faq_answers, read_kb
    from pipeline.data.readers import read_beir
    from pipeline.data.sources import held_documents
    from pipeline.params import load_params

    rows, stats = bundled_prepare(tmp_path, monkeypatch, tiny_model)
    linked = pd.read_csv(tmp_path / "data/raw/messages/linked.csv")
    anchors = {r["anchor"] for r in rows}
    trained = linked[linked["message"].isin(anchors)]
    repeat = load_params("prepare", path="params.yaml")["messages"]["repeat"]  # each message's pairs, seen k times
    assert stats["messages"]["linked"] == len(linked)
    assert len(trained) * repeat == stats["pairs"]["train_by_source"]["message"]
    assert 150 <= len(trained) < len(linked)
    # what was set aside: the FAQ answers the split holds out and the sections of held-out documents
    data = load_params("data", path="params.yaml")
    sections, answers = read_kb(data["kb"]), faq_answers(data)
    text_of = {s["id"]: s["text"] for s in sections} | {a["id"]: a["text"] for a in answers}
    dropped = linked[~linked["message"].isin(anchors)]
    assert {d.split("#")[0] for d in dropped["passage_id"] if d.startswith("kb/")} >= {"kb/feline-leukemia-virus", "kb/rabies"}
    for pid in trained["passage_id"]:
        assert not pid.startswith(("kb/feline-leukemia-virus", "kb/rabies")), pid
    judged = set()
    for split in ("test", "val"):
        corpus, _, qrels = read_beir(tmp_path / "data/prepared" / split)
        judged |= {normalize(corpus[d]) for docs in qrels.values() for d in docs}
    assert judged and not {normalize(text_of[p]) for p in trained["passage_id"]} & judged
    # the held-out sets are the same with or without messages
    test_queries = (tmp_path / "data/prepared/test/queries.jsonl").read_text()
    shutil.rmtree(tmp_path / "data/prepared")
    (tmp_path / "reports/data_stats.json").unlink()
    without, stats_without = bundled_prepare(tmp_path / "none", monkeypatch, tiny_model, {"data.messages": []})
    assert (tmp_path / "none/data/prepared/test/queries.jsonl").read_text() == test_queries
    assert stats_without["pairs"]["val_queries"] == stats["pairs"]["val_queries"]
    by_source = stats["pairs"]["train_by_source"]
    assert len(rows) - len(without) == sum(n for kind, n in by_source.items() if kind.startswith("message"))
    assert held_documents(sections, (set(), set()), {"rabies"}) == {"kb: rabies.md"}


def test_unlinked_messages_are_labelled_only_when_the_labeller_is_precise_on_the_linked_ones(tmp_path, monkeypatch,
                                                                                           tiny_model):
    """With a random tiny model the base model and BM25 rarely agree, and the labels it does make are checked on the
    linked messages: too few or too uncertain, they are not used, and data_stats.json says so."""
    rows, stats = bundled_prepare(tmp_path, monkeypatch, tiny_model, {"prepare.messages.min_labels": 100000})
    counts = stats["messages"]
    assert counts["unlinked"] == 165 and counts["unlinked_used"] == 0
    assert counts["label_check"]["linked_messages"] == 264
    unlinked = set(pd.read_csv(tmp_path / "data/raw/messages/unlinked.csv")["message"])
    assert not unlinked & {r["anchor"] for r in rows}


@pytest.mark.parametrize("check_right, used", [(True, True), (False, False)])
def test_a_message_naming_only_its_question_is_labelled_from_the_question(monkeypatch, check_right, used):
    """The labeller runs on the plain questions (messages 3 and 4 reached no passage), is checked on the questions
    of the messages that did (1 and 2), and its labels are kept only when that check is precise enough."""
    from pipeline.data import messages as module

    frame = pd.DataFrame({"message": ["m1", "m2", "m3", "m4"], "question": ["q1", "q2", "q3", "q4"],
                          "where": [f"f:{i}" for i in range(1, 5)]})
    positive = pd.Series(["answer one", "answer two", None, None], dtype=object)
    has_question = pd.Series([True] * 4)
    targets = {"faq/1": "answer one", "faq/2": "answer two", "faq/3": "answer three"}
    seen = []

    def labeller(texts, passages, model, margin, batch_size, precision):
        seen.append(texts)
        checked = ["answer one", "answer two"] if check_right else ["answer two", "answer three"]
        return ["answer three", None, *checked]

    monkeypatch.setattr(module, "agreed_labels", labeller)
    cfg = {"batch_size": 8, "label_margin": 0.03, "min_labels": 1, "min_label_precision": 0.7}
    labels, counts = module.question_labels(frame, positive, has_question, targets, None, cfg)
    assert seen == [["q3", "q4", "q1", "q2"]]  # the questions, not the messages
    assert counts["precision"] == (1.0 if check_right else 0.0) and counts["labelled"] == 1
    assert labels.to_dict() == ({2: "answer three", 3: None} if used else {2: None, 3: None})
    assert counts["used"] == (1 if used else 0)


def test_messages_repeat_raises_their_share_and_nothing_else():
    from pipeline.data.messages import oversample

    train = pd.DataFrame({"query": ["faq q", "msg", "msg q", "label"], "positive": ["a", "b", "c", "d"],
                          "kind": ["faq", "message", "message_question", "message_label"]})
    assert oversample(train, 1).equals(train)
    three = oversample(train, 3)
    assert three["kind"].value_counts().to_dict() == {"message": 3, "message_question": 3, "message_label": 3, "faq": 1}
    with pytest.raises(InputError, match="prepare.messages.repeat 0"):
        oversample(train, 0)
