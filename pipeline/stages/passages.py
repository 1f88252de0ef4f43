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
    with atomic_file(PASSAGES) as tmp:
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in unique), encoding="utf-8")
    sections = len({p["section"] for p in unique})
    log.info("%s: %d passages from %d sections and answers (%s; %d duplicate texts dropped)", PASSAGES, len(unique),
             sections, cfg["strategy"], len(passages) - len(unique))


if __name__ == "__main__":
    run_main(main)
