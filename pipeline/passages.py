"""Stage 0, passages: cut the knowledge base into the passages the index serves and evaluation scores.

One file, read by both: what the index serves is what evaluation scored, chunk for chunk. The cut is a parameter,
measured like any other (README, "Chunking"):
  section     one passage per '## ' section (a BEIR corpus: per record); the encoder reads its first
              encode.max_seq_length tokens and ignores the rest
  paragraph   the section's paragraphs, those too long for the window cut at sentence ends into the fewest
              pieces that fit: no text falls past the encoder's limit
  window      token windows of the section, consecutive ones sharing passages.overlap_tokens
Every cut stays inside one section, so a chunk overlaps exactly one section: the unit test sets judge
(`kb/<stem>#<n>`). A test set's relevant section counts as found where a chunk of it is retrieved.

Reads   params: data.kb, data.faq, data.faq_columns, model.base (its tokenizer counts tokens), passages.*,
                encode.max_seq_length
        files:  data.kb documents, data.faq answers
Writes  data/passages.jsonl   one passage a line: id, section, title, heading, text, source

    python -m pipeline.passages
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from pipeline.common import (
    InputError,
    atomic_file,
    load_params,
    local_model_path,
    passage_text,
    read_kb,
    read_records,
    require_tracked,
    resolve_model,
    run_main,
)

log = logging.getLogger("pipeline.passages")
OUT = Path("data/passages.jsonl")
STRATEGIES = ("section", "paragraph", "window")


def sentence_pieces(paragraph: str, count, limit: int) -> list[str]:
    """Whole sentences packed greedily into pieces of at most `limit` tokens (a longer sentence stands alone)."""
    pieces, current = [], []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        if current and count(" ".join(current + [sentence])) > limit:
            pieces.append(" ".join(current))
            current = []
        current.append(sentence)
    return pieces + [" ".join(current)] if current else pieces


def token_windows(text: str, tokenizer, window: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of windows of at most `window` tokens, each sharing at least `overlap` tokens with the last.
    Cuts fall between words (a window never ends or starts inside a word split into word pieces)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets, words, n = enc["offset_mapping"], enc.word_ids(), len(enc["input_ids"])

    def word_start(i: int) -> int:
        while 0 < i < n and words[i - 1] == words[i]:
            i -= 1
        return i

    spans, start = [], 0
    while True:
        end = min(start + window, n)
        if end < n and word_start(end) > start:
            end = word_start(end)
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end >= n:
            return spans
        following = word_start(end - overlap)
        start = following if following > start else max(end - overlap, start + 1)


def chunk_section(section: dict, cfg: dict, tokenizer, max_seq_length: int) -> list[str]:
    if cfg["strategy"] == "section":
        return [section["text"]]
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    # what the encoder has room for: its length, less [CLS]/[SEP] and the "title: heading." every chunk carries
    window = cfg["window_tokens"] or max_seq_length - 2 - count(passage_text(section["title"], section["heading"], ""))
    if window < 16:
        why = "" if cfg["window_tokens"] else (f" (null: what encode.max_seq_length {max_seq_length} leaves after "
                                                f"\"{section['title']}: {section['heading']}.\")")
        raise InputError(f"params.yaml: passages.window_tokens: {window} tokens per chunk{why} is too few: at least "
                         "16; raise encode.max_seq_length or set passages.window_tokens")
    if cfg["strategy"] == "paragraph":
        return [p for para in section["paragraphs"] for p in sentence_pieces(para, count, window)]
    overlap = int(cfg["overlap_tokens"])
    if not 0 <= overlap < window:
        raise InputError(f"params.yaml: passages.overlap_tokens {overlap} must be in [0, window of {window} tokens)")
    return [section["text"][a:b] for a, b in token_windows(section["text"], tokenizer, window, overlap)]


def cut(sections: list[dict], cfg: dict, tokenizer, max_seq_length: int) -> list[dict]:
    passages = []
    for section in sections:
        chunks = chunk_section(section, cfg, tokenizer, max_seq_length)
        for i, text in enumerate(chunks, start=1):
            passages.append({"id": section["id"] if len(chunks) == 1 else f"{section['id']}/{i}",
                             "section": section["id"], "title": section["title"], "heading": section["heading"],
                             "text": text, "source": section["source"]})
    return passages


def faq_answers(data: dict) -> list[dict]:
    """Each FAQ answer, whole: `faq/<row>` (1-based data row; `faq/<file stem>/<row>` when there are several files)."""
    cols, files = data["faq_columns"], data.get("faq") or []
    out = []
    for f in files:
        prefix = "faq/" if len(files) == 1 else f"faq/{Path(f).stem}/"
        df = read_records(f, {"question": cols["question"], "answer": cols["answer"]}, key="data.faq")
        out += [{"id": f"{prefix}{row}", "section": f"{prefix}{row}", "title": "", "heading": "", "text": r.answer,
                 "source": r.where, "question": r.question} for row, r in enumerate(df.itertuples(), start=1)]
    return out


def main() -> None:
    from transformers import AutoTokenizer

    data, cfg = load_params("data"), load_params("passages")
    base = load_params("model")["base"]
    max_seq_length = int(load_params("encode")["max_seq_length"])
    if cfg["strategy"] not in STRATEGIES:
        raise InputError(f"params.yaml: passages.strategy {cfg['strategy']!r} is not one of {', '.join(STRATEGIES)}")
    require_tracked("passages", {"data.kb": data["kb"], "model.base": local_model_path(base),
                                 "data.faq": data.get("faq") if cfg["include_faq_answers"] else None})
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(base))
    passages = cut(read_kb(data["kb"]), cfg, tokenizer, max_seq_length)
    if cfg["include_faq_answers"]:
        passages += faq_answers(data)
    unique = list({p["text"]: p for p in reversed(passages)}.values())[::-1]  # one passage per text, the first
    with atomic_file(OUT) as tmp:
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in unique), encoding="utf-8")
    sections = len({p["section"] for p in unique})
    log.info("%s: %d passages from %d sections and answers (%s; %d duplicate texts dropped)", OUT, len(unique),
             sections, cfg["strategy"], len(passages) - len(unique))


if __name__ == "__main__":
    run_main(main)
