"""Readers of the user's files (CSV, JSONL, Parquet, BEIR folders) with errors naming file, line and field, and
the one text a passage is encoded as.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pandas as pd

from pipeline.params import InputError, repo_path

CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)  # csv's default is 131072 characters; the cap fits a C long everywhere


def normalize(text: str) -> str:
    """Lowercase, punctuation and spacing folded: 'What are the symptoms of X ?' == 'what are the symptoms of x'."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _first_bad_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8. Not the decoder's error offset: that counts from the start of
    the chunk the reader was decoding, so a bad byte on line 901 reads as line 173."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _params_key(key: str | None) -> str:
    """Error message prefix naming the params.yaml setting a path came from, when the caller knows it."""
    return f"params.yaml: {key}: " if key else ""


def read_records(path: str | Path, fields: dict[str, str], optional: dict[str, str] | None = None,
                 key: str | None = None) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file and validate it.

    `fields` maps our name -> the file's column name; each must be present with non-empty text in every row.
    `optional` columns are kept when the file has them. The frame gets a `where` column ("file:line") so later
    messages and reports can point at the row. Raises InputError naming file, line and field (and `key`, the
    params.yaml setting the path came from, when the path is not a file).
    """
    path = repo_path(path)
    optional = optional or {}
    if path.is_dir():
        raise InputError(f"{_params_key(key)}{path} is a folder, expected a file (.csv, .jsonl or .parquet)")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []  # (line number, raw record)
    try:
        if suffix == ".csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)  # a long answer is not an error...
            with open(path, encoding="utf-8-sig", newline="") as f:
                # ...so strict: an unclosed or stray quote fails here instead of swallowing the rows after it
                reader = csv.DictReader(f, strict=True)
                line = 1
                try:
                    header = reader.fieldnames or []
                    line = reader.line_num + 1
                    for record in reader:
                        if None in record or None in record.values():
                            raise InputError(f"{path}:{line}: row has {len(header)} columns expected, got a different number")
                        rows.append((line, record))
                        line = reader.line_num + 1
                except csv.Error as e:  # `line`: where the bad record starts; the reader stopped further on
                    raise InputError(f"{path}:{line}: unreadable CSV ({e}; read up to line {reader.reader.line_num}: "
                                     "an unclosed or stray quote?)") from None
        elif suffix in (".jsonl", ".json"):
            header = None
            with open(path, encoding="utf-8") as f:
                for line, text in enumerate(f, start=1):
                    if not text.strip():
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{line}: not valid JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise InputError(f"{path}:{line}: expected a JSON object")
                    rows.append((line, record))
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
            header = list(frame.columns)
            # Parquet has no lines: "line" is the 1-based row number.
            rows = [(i + 1, rec) for i, rec in enumerate(frame.to_dict("records"))]
        else:
            raise InputError(f"{path}: unsupported file type '{suffix}' (use .csv, .jsonl or .parquet)")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{_first_bad_line(path)}: not valid UTF-8 ({e.reason})") from None
    except csv.Error as e:
        raise InputError(f"{path}: unreadable CSV ({e})") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    if header is not None:
        missing = [col for col in fields.values() if col not in header]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {missing}; the header has {list(header)}")
    out = []
    for line, record in rows:
        item = {"where": f"{path.name}:{line}"}
        for ours, col in fields.items():
            value = record.get(col)
            if value is None and header is None:
                raise InputError(f"{path}:{line}: field '{col}' is missing")
            text = "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()
            if not text:
                raise InputError(f"{path}:{line}: field '{col}' is empty")
            item[ours] = text
        for ours, col in optional.items():
            value = record.get(col)
            if value is not None and str(value).strip():
                item[ours] = str(value).strip()
        out.append(item)
    return pd.DataFrame(out)


def read_beir(folder: str | Path, key: str | None = None) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """A BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels.tsv (header line).
    `key`: the params.yaml setting the folder came from, for the error when it is a file."""
    folder = repo_path(folder)
    if folder.is_file():
        raise InputError(f"{_params_key(key)}{folder} is a file, expected a BEIR folder "
                         "(corpus.jsonl, queries.jsonl, qrels.tsv)")
    corpus_df = read_records(folder / "corpus.jsonl", {"id": "_id", "text": "text"}, {"title": "title"})
    titles = corpus_df["title"] if "title" in corpus_df else [None] * len(corpus_df)
    corpus = {i: passage_text(t if isinstance(t, str) else "", "", x) for i, t, x in zip(corpus_df["id"], titles, corpus_df["text"])}
    queries_df = read_records(folder / "queries.jsonl", {"id": "_id", "text": "text"})
    queries = dict(zip(queries_df["id"], queries_df["text"]))
    qrels_path = folder / "qrels.tsv"
    if not qrels_path.is_file():
        raise InputError(f"{qrels_path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            parts = text.rstrip("\n").split("\t")
            if line == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if not text.strip():
                continue
            if len(parts) != 3:
                raise InputError(f"{qrels_path}:{line}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            qid, did, score = parts
            if qid not in queries:
                raise InputError(f"{qrels_path}:{line}: field 'query-id' {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise InputError(f"{qrels_path}:{line}: field 'corpus-id' {did!r} is not in corpus.jsonl")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    queries = {q: t for q, t in queries.items() if q in qrels}  # a query with no relevant passage cannot be scored
    return corpus, queries, qrels


def read_topics(folder: str | Path, file: str = "queries.jsonl") -> pd.Series | None:
    """A BEIR file's optional `topic` field (id -> topic), or None when no record has one."""
    df = read_records(repo_path(folder) / file, {"id": "_id"}, {"topic": "topic"})
    return df.set_index("id")["topic"].dropna() if "topic" in df else None


def beir_passage_texts(folder: str | Path) -> dict[str, str]:
    """corpus.jsonl's `text` alone, by id (read_beir puts the title in front), to recognise a passage elsewhere."""
    path = repo_path(folder) / "corpus.jsonl"
    df = read_records(path, {"id": "_id", "text": "text"})
    return dict(zip(df["id"], df["text"]))


def write_beir(folder: Path, corpus: dict, queries: dict, qrels: dict, topics: dict | None = None) -> None:
    """A BEIR folder; `topics` (id -> topic, for queries and passages alike) adds the optional `topic` field that
    evaluation clusters its intervals by and the "no good match" calibration takes out whole."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, records, extra in (("corpus", corpus, {"title": ""}), ("queries", queries, {})):
        frame = pd.DataFrame({"_id": list(records), **extra, "text": list(records.values())})
        if topics:
            frame["topic"] = [topics.get(i) for i in records]
        frame.to_json(folder / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)
    rows = [(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]
    pd.DataFrame(rows, columns=["query-id", "corpus-id", "score"]).to_csv(folder / "qrels.tsv", sep="\t", index=False)


def passage_text(title: str, heading: str, text: str) -> str:
    """The one text encoded for a passage, by the index and by evaluation alike: "title: heading. text".

    A BEIR corpus' title goes in front the same way, so a test set's copy of a knowledge-base section
    ("Article: Heading") is encoded exactly as the index encodes that section.
    """
    prefix = ": ".join(dict.fromkeys(x for x in (title, heading) if x))  # an introduction's heading is its title
    return f"{prefix}. {text}" if prefix else text
