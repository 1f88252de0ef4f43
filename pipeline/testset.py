"""Build a held-out test set from your users' questions: a file of questions, each with what answers it, becomes a
BEIR folder whose judged ids are the passages the index serves.

    python -m pipeline.testset my_questions.csv --name tickets
    python -m pipeline.testset my_questions.jsonl --name tickets --columns question=text,faq_row=row,topic=product
    python -m pipeline.testset --name tickets --check   # still judged against what the knowledge base holds now?

The file (CSV, JSONL or Parquet) has a `question` column and, per row, one of: `passage_id` (a served section,
`kb/<stem>#<n>` or `faq/<row>`), `faq_row` (1-based data row of data.faq; `<file stem>/<row>` with several FAQ
files) or `answer` (the text of a knowledge-base section or FAQ answer, whitespace aside). Rows repeating a question
add judged passages to it. An optional `topic` groups questions for the interval (default: the judged passage's
document or FAQ group). `--columns` maps these roles to your column names.

Writes data/raw/testsets/<name>/ (corpus.jsonl: every section and FAQ answer as the knowledge base has it now;
queries.jsonl with topics; qrels.tsv; testset.json: how it was built). Add it to params.yaml under data.testsets.
Evaluation checks on every run that each judged passage is still served with the same text; when one was edited
or removed, its error names the id, the change and this command to rebuild the set.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from pipeline.data.kb import faq_answers, read_kb, topic_key
from pipeline.data.readers import read_records, write_beir
from pipeline.files import atomic_dir
from pipeline.params import InputError, load_params, repo_path, run_main

log = logging.getLogger("pipeline.testset")
ROLES = ("question", "topic", "passage_id", "faq_row", "answer")
LINKS = ("passage_id", "faq_row", "answer")


def served_sections(data: dict) -> dict[str, dict]:
    """Every section and FAQ answer by id, whole, as the passages stage reads them before cutting: the unit a test
    set judges (a chunk of a judged section counts as finding it)."""
    return {s["id"]: s for s in read_kb(data["kb"]) + faq_answers(data)}


def judged_id(row, sections: dict[str, dict], by_text: dict[str, str], columns: dict) -> str:
    """The served section a row names: by id, by FAQ row or by its text. Nothing found is an error naming the line."""
    for role in LINKS:
        value = getattr(row, role, None)
        if not isinstance(value, str) or not value.strip():
            continue
        if role == "answer":
            found = by_text.get(" ".join(value.split()))
            if found:
                return found
            raise InputError(f"{row.where}: field '{columns[role]}': no knowledge-base section or FAQ answer has this "
                             f"text ({value[:60]!r}…); copy it as the knowledge base has it, or give passage_id")
        pid = value.strip() if role == "passage_id" else f"faq/{value.strip().removesuffix('.0')}"
        if pid in sections:
            return pid
        kind = "a row of data.faq (1-based)" if role == "faq_row" else "a served id (kb/<stem>#<n> or faq/<row>)"
        raise InputError(f"{row.where}: field '{columns[role]}' {value!r} is not {kind}")
    raise InputError(f"{row.where}: names no answer: give one of the columns "
                     f"{', '.join(columns.get(r, r) for r in LINKS)}")


def build(path: str, columns: dict, data: dict) -> tuple[dict, dict, dict, dict]:
    """corpus (id -> text), queries, qrels and topics of the set, from the questions file and the knowledge base."""
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise InputError(f"--columns: unknown roles {unknown}; the roles are {', '.join(ROLES)}")
    columns = {role: columns.get(role, role) for role in ROLES}
    df = read_records(path, {"question": columns["question"]}, {r: columns[r] for r in ROLES if r != "question"})
    sections = served_sections(data)
    by_text = {" ".join(s["text"].split()): sid for sid, s in sections.items()}
    queries, qrels, topics = {}, {}, {}
    ids: dict[str, str] = {}
    for row in df.itertuples():
        doc = judged_id(row, sections, by_text, columns)
        qid = ids.setdefault(" ".join(row.question.split()), f"q{len(ids) + 1:04d}")
        queries[qid] = row.question.strip()
        qrels.setdefault(qid, {})[doc] = 1
        given = topic_key(getattr(row, "topic", None))
        topics.setdefault(qid, given or sections[doc].get("topic") or doc.split("#")[0])
    corpus = {sid: s["text"] for sid, s in sections.items()}
    titles = {sid: ": ".join(dict.fromkeys(x for x in (s["title"], s["heading"]) if x)) for sid, s in sections.items()}
    topics.update({sid: s.get("topic") for sid, s in sections.items()})
    return corpus, queries, qrels, {"topics": topics, "titles": titles}


def check(folder: Path, data: dict) -> None:
    """The check evaluation makes on every run, now: each judged passage still in the knowledge base, unchanged."""
    from pipeline.eval.heldout import scored_set

    served = [{**s, "section": sid} for sid, s in served_sections(data).items()]
    _, queries, qrels, _ = scored_set(folder, served)
    log.info("%s: its %d questions' %d judged passages are served with the text they were judged on", folder,
             len(queries), sum(map(len, qrels.values())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Make a held-out test set judged against the served passages.")
    parser.add_argument("questions", nargs="?", help="CSV, JSONL or Parquet: a question and what answers it, per row")
    parser.add_argument("--name", required=True, help="the set's name in data.testsets (letters, digits, _ and -)")
    parser.add_argument("--columns", default="", help="role=column pairs, comma-separated (roles: " + ", ".join(ROLES) + ")")
    parser.add_argument("--out", default="data/raw/testsets", help="the folder the set is written under")
    parser.add_argument("--check", action="store_true", help="check the set against the knowledge base as it is now")
    args = parser.parse_args(argv)
    if args.check:
        return check(repo_path(args.out) / args.name, load_params("data"))
    if not args.questions:
        parser.error("give the questions file (or --check)")
    try:
        columns = dict(pair.split("=", 1) for pair in args.columns.split(",") if pair.strip())
    except ValueError:
        raise InputError(f"--columns {args.columns!r}: give role=column pairs, e.g. question=text,faq_row=row") from None
    corpus, queries, qrels, extra = build(args.questions, columns, load_params("data"))
    target = repo_path(args.out) / args.name
    command = "python -m pipeline.testset " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    with atomic_dir(target) as out:
        write_beir(out, corpus, queries, qrels, extra["topics"])
        lines = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
        with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:  # a section's title as the index encodes it
            f.writelines(json.dumps({**r, "title": extra["titles"][r["_id"]]}, ensure_ascii=False)
                         + "\n" for r in lines)
        (out / "testset.json").write_text(json.dumps({"built_with": command, "questions": args.questions},
                                                     indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s: %d questions, %d judged passages, %d topics; add `%s: %s` under data.testsets in params.yaml",
             target, len(queries), sum(map(len, qrels.values())), len({extra["topics"][q] for q in queries}), args.name,
             args.out.rstrip("/") + "/" + args.name)


if __name__ == "__main__":
    run_main(main)
