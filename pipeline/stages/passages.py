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
                encode.max_seq_length (inputs past passages.warn_above_tokens get a warning with their count)
        files:  data.kb documents, data.faq answers
Writes  data/passages.jsonl   one passage a line: id, section, title, heading, text, source

    python -m pipeline.stages.passages
"""

from __future__ import annotations

import json
import logging

from pipeline.data.chunking import STRATEGIES, cut
from pipeline.data.kb import faq_answers, read_kb
from pipeline.files import atomic_file
from pipeline.models import local_model_path, resolve_model
from pipeline.params import InputError, load_params, require_tracked, run_main
from pipeline.paths import PASSAGES

log = logging.getLogger("pipeline.passages")


def warn_long_inputs(sections: list[dict], answers: list[dict], tokenizer, limit: int, max_seq_length: int,
                     strategy: str) -> None:
    """Say how many inputs are far past the encoder's window (a 1 MB answer pasted by mistake, a whole manual in
    one section) and which parameter handles them: silently cutting them at max_seq_length hides that most of
    their text is never searched."""
    def too_long(items: list[dict]) -> list[str]:
        lengths = tokenizer([p["text"] for p in items], add_special_tokens=False)["input_ids"] if items else []
        return [p["id"] for p, ids in zip(items, lengths) if len(ids) > limit]

    long_sections, long_answers = too_long(sections), too_long(answers)
    if long_sections and strategy == "section":
        log.warning("%d knowledge-base sections are longer than %d tokens (%s): the encoder reads their first %d; "
                    "passages.strategy paragraph or window cuts them into passages it reads whole",
                    len(long_sections), limit, ", ".join(long_sections[:5]), max_seq_length)
    if long_answers:
        log.warning("%d FAQ answers are longer than %d tokens (%s): they are served whole and the encoder reads "
                    "their first %d; split them in the FAQ, or move them to data.kb where passages.strategy cuts "
                    "them", len(long_answers), limit, ", ".join(long_answers[:5]), max_seq_length)


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
    sections = read_kb(data["kb"])
    answers = faq_answers(data) if cfg["include_faq_answers"] else []
    warn_long_inputs(sections, answers, tokenizer, int(cfg["warn_above_tokens"]), max_seq_length, cfg["strategy"])
    passages = cut(sections, cfg, tokenizer, max_seq_length) + answers
    unique = list({p["text"]: p for p in reversed(passages)}.values())[::-1]  # one passage per text, the first
    with atomic_file(PASSAGES) as tmp:
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in unique), encoding="utf-8")
    sections = len({p["section"] for p in unique})
    log.info("%s: %d passages from %d sections and answers (%s; %d duplicate texts dropped)", PASSAGES, len(unique),
             sections, cfg["strategy"], len(passages) - len(unique))


if __name__ == "__main__":
    run_main(main)
