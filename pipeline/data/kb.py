"""The knowledge base as documents and sections (`kb/<stem>#<n>`), and the FAQ answers served beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.readers import _params_key, read_records
from pipeline.params import InputError, repo_path


def markdown_sections(path: Path) -> list[dict]:
    """A Markdown/text document -> one passage per '## ' section (title from '# ', else the file name).

    Each section is `kb/<file stem>#<n>` (n from 1: #1 is the introduction before the first '## ' heading), the
    id test sets judge; `paragraphs` keeps its blank-line paragraphs for chunking, `text` is them joined."""
    text = path.read_text(encoding="utf-8")
    title = path.stem.replace("-", " ").replace("_", " ").capitalize()
    sections, heading, paragraphs = [], None, [[]]

    def flush():
        paras = [" ".join(" ".join(p).split()) for p in paragraphs]
        paras = [p for p in paras if p]
        if paras:
            sections.append({"id": f"kb/{path.stem}#{len(sections) + 1}", "title": title, "heading": heading or title,
                             "text": " ".join(paras), "paragraphs": paras, "source": path.name,
                             "topic": path.stem.lower()})

    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
        elif line.startswith("## "):
            flush()
            heading, paragraphs = line[3:].strip(), [[]]
        elif not line.strip():
            paragraphs.append([])
        else:
            paragraphs[-1].append(line.strip())
    flush()
    return sections


def read_kb(folder: str, key: str = "data.kb") -> list[dict]:
    """Sections of the knowledge base: '## ' sections of .md/.txt files in a folder (`kb/<stem>#<n>`), or the
    passages of a BEIR corpus.jsonl (`kb/<_id>`)."""
    path = repo_path(folder)
    if path.is_file() and path.suffix.lower() in (".md", ".markdown", ".txt"):
        raise InputError(f"{_params_key(key)}{path} is a file, expected a folder of .md/.txt documents "
                         "(or a BEIR corpus.jsonl)")
    if path.is_file():
        df = read_records(path, {"id": "_id", "text": "text"}, {"title": "title"}, key=key)
        return [{"id": f"kb/{r['id']}", "title": r.get("title", "") or "", "heading": "", "text": r["text"],
                 "paragraphs": [p for p in re.split(r"\n\s*\n", r["text"]) if p.strip()],
                 "source": f"{path.name}#{r['id']}"} for r in df.to_dict("records")]
    files = sorted(p for p in path.glob("**/*") if p.suffix.lower() in (".md", ".markdown", ".txt"))
    if not files:
        raise InputError(f"{path}: no .md or .txt documents found")
    passages = []
    for f in files:
        try:
            passages += markdown_sections(f)
        except UnicodeDecodeError as e:
            raise InputError(f"{f}: not valid UTF-8 at byte {e.start}") from None
    return passages


def faq_answers(data: dict) -> list[dict]:
    """Each FAQ answer, whole: `faq/<row>` (1-based data row; `faq/<file stem>/<row>` when there are several files),
    with its group (data.faq_columns.group) as its topic; a knowledge-base section's topic is its document's name.
    A topic is what the "no good match" calibration takes out of the index whole (pipeline/eval/no_match.py)."""
    cols, files = data["faq_columns"], data.get("faq") or []
    optional = {"group": cols["group"]} if cols.get("group") else {}
    out = []
    for f in files:
        prefix = "faq/" if len(files) == 1 else f"faq/{Path(f).stem}/"
        df = read_records(f, {"question": cols["question"], "answer": cols["answer"]}, optional, key="data.faq")
        groups = df["group"] if "group" in df else [None] * len(df)
        out += [{"id": f"{prefix}{row}", "section": f"{prefix}{row}", "title": "", "heading": "", "text": r.answer,
                 "source": r.where, "question": r.question, "topic": topic_key(group)}
                for row, (r, group) in enumerate(zip(df.itertuples(), groups), start=1)]
    return out


def topic_key(value) -> str | None:
    """A topic as compared across sources: a FAQ group, a document's name, a test query's `topic`."""
    return None if value is None or value != value else str(value).strip().lower() or None  # NaN != NaN
