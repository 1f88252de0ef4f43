"""Cutting knowledge-base sections into the passages the index serves: whole sections, paragraphs packed at
sentence ends, or token windows with overlap (passages.strategy).
"""

from __future__ import annotations

import re

from pipeline.data.readers import passage_text
from pipeline.params import InputError

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
                             "text": text, "source": section["source"], "topic": section.get("topic")})
    return passages
