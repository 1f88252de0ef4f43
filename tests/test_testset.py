"""pipeline.testset: a held-out set built from the user's questions, judged against the served passages, and the
error that names an edited or removed judged passage with the command that rebuilds the set."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.eval.heldout import scored_set
from pipeline.params import InputError
from pipeline.paths import ROOT


@pytest.fixture
def project(tmp_path, monkeypatch):
    for name in ("data/raw", "params.yaml"):
        src, dst = ROOT / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def served(project) -> list[dict]:
    """The passages the index serves with passages.strategy section: each section and FAQ answer whole."""
    from pipeline.params import load_params
    from pipeline.testset import served_sections

    return [{**s, "section": sid} for sid, s in served_sections(load_params("data")).items()]


def test_questions_become_a_set_judged_against_the_served_passages(project):
    from pipeline.testset import main

    faq_answer = (project / "data/raw/faq.csv").read_text().splitlines()[1]
    parvo = next(p for p in served(project) if p["id"] == "kb/canine-parvovirus#3")
    (project / "questions.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"q": "my puppy has bloody diarrhea, is it parvo?", "link": "kb/canine-parvovirus#3"},
        {"q": "my puppy has bloody diarrhea, is it parvo?", "row": "1"},  # a second judged passage, same question
        {"q": "how is parvo spread", "text": "  " + parvo["text"].replace(". ", ".\n ") + " "},  # by text, spacing aside
    ]) + "\n")
    main(["questions.jsonl", "--name", "tickets", "--columns", "question=q,passage_id=link,faq_row=row,answer=text"])
    folder = project / "data/raw/testsets/tickets"
    queries = [json.loads(x) for x in (folder / "queries.jsonl").read_text().splitlines()]
    assert [(q["_id"], q["topic"]) for q in queries] == [("q0001", "canine-parvovirus"), ("q0002", "canine-parvovirus")]
    assert (folder / "qrels.tsv").read_text().splitlines()[1:] == [
        "q0001\tkb/canine-parvovirus#3\t1", "q0001\tfaq/1\t1", "q0002\tkb/canine-parvovirus#3\t1"]
    built = json.loads((folder / "testset.json").read_text())
    assert built["built_with"].startswith("python -m pipeline.testset questions.jsonl --name tickets")
    assert faq_answer  # the FAQ has rows; faq/1 is its first
    corpus, _, qrels, section_of = scored_set(folder, served(project))  # scored on the served passages
    assert section_of is not None and qrels["q0001"] == {"kb/canine-parvovirus#3": 1, "faq/1": 1}

    # the knowledge base edited after the set was built: the judged passage is named, with the change and the fix
    edited = [dict(p, text=p["text"].replace("parvovirus", "parvo virus", 1)) if p["id"] == parvo["id"] else p
              for p in served(project)]
    with pytest.raises(InputError, match=r"judges kb/canine-parvovirus#3, which the index now serves with other text "
                                         r"\(from character \d+: served .*parvo virus.*rebuild the set: "
                                         r"`python -m pipeline.testset questions.jsonl --name tickets"):
        scored_set(folder, edited)
    removed = [p for p in served(project) if p["id"] != "faq/1"]
    with pytest.raises(InputError, match=r"judges faq/1, which the index no longer serves .*rebuild the set"):
        scored_set(folder, removed)

    main(["--name", "tickets", "--check"])  # the same check on demand, against the knowledge base as it is now
    kb = project / "data/raw/kb/canine-parvovirus.md"
    kb.write_text(kb.read_text().replace(parvo["text"][:40], parvo["text"][:40].upper(), 1))
    with pytest.raises(InputError, match=r"judges kb/canine-parvovirus#3, which the index now serves with other text"):
        main(["--name", "tickets", "--check"])


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "passage_id": "kb/no-such-doc#1"}, r"questions.jsonl:1: field 'passage_id' 'kb/no-such-doc#1' "
                                                          r"is not a served id"),
    ({"question": "q", "faq_row": "99999"}, r"questions.jsonl:1: field 'faq_row' '99999' is not a row of data.faq"),
    ({"question": "q", "answer": "text found nowhere"}, r"questions.jsonl:1: field 'answer': no knowledge-base section"),
    ({"question": "q", "topic": "x"}, r"questions.jsonl:1: names no answer"),
])
def test_a_question_whose_answer_is_not_served_is_an_error_naming_the_line_and_field(project, row, message):
    from pipeline.testset import main

    (project / "questions.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match=message):
        main(["questions.jsonl", "--name", "bad"])
    assert not (project / "data/raw/testsets/bad").exists()  # nothing written
