"""Stage 4, index: the knowledge base encoded by the fine-tuned model into a FAISS index for the RAG system.

Reads   params: data.kb, data.faq, data.faq_columns, model.base, index.*
        files:  data.kb documents (one passage per '## ' section), data.faq answers, models/finetuned/
Writes  models/index/passages.jsonl   one passage a line: title, heading, text, source (file and section or line)
        models/index/finetuned.faiss  inner-product index of unit vectors (= cosine) from the fine-tuned model
        models/index/base.faiss       the same from the base model, for `python -m pipeline.compare`
        models/index/info.json        which model encoded which index, and how

    python -m pipeline.index
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import pandas as pd

from pipeline.common import atomic_dir, load_model, load_params, read_kb, read_records, run_main, write_json
from pipeline.retrieval import encode

log = logging.getLogger("pipeline.index")
MODEL_DIR = Path("models/finetuned")
OUT_DIR = Path("models/index")


def collect_passages(data: dict, include_faq_answers: bool) -> list[dict]:
    passages = read_kb(data["kb"])
    if include_faq_answers:
        cols = data["faq_columns"]
        for f in data.get("faq") or []:
            df = read_records(f, {"question": cols["question"], "answer": cols["answer"]})
            passages += [{"title": r.question, "heading": "", "text": r.answer, "source": r.where}
                         for r in df.itertuples()]
    unique = list({p["text"]: p for p in passages}.values())  # one passage per distinct text
    log.info("%d passages (%d duplicates dropped)", len(unique), len(passages) - len(unique))
    return unique


def build_index(model, texts: list[str], batch_size: int) -> faiss.Index:
    # Exact search: a knowledge base of up to ~1M passages is searched in milliseconds by a flat index;
    # an approximate one (HNSW, IVF) only pays for itself beyond that.
    vectors = encode(model, texts, batch_size).cpu().numpy().astype("float32")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def main() -> None:
    data, cfg = load_params("data"), load_params("index")
    base = load_params("model")["base"]
    passages = collect_passages(data, bool(cfg["include_faq_answers"]))
    texts = [f"{p['title']}: {p['heading']}. {p['text']}" if p["heading"] else p["text"] for p in passages]
    with atomic_dir(OUT_DIR) as out:
        pd.DataFrame(passages).to_json(out / "passages.jsonl", orient="records", lines=True, force_ascii=False)
        for name, model_ref in [("finetuned", str(MODEL_DIR)), ("base", base)]:
            model = load_model(model_ref, max_seq_length=int(cfg["max_seq_length"]))
            faiss.write_index(build_index(model, texts, int(cfg["batch_size"])), str(out / f"{name}.faiss"))
            log.info("encoded %d passages with %s", len(texts), model_ref)
        write_json(out / "info.json", {"models": {"finetuned": str(MODEL_DIR), "base": base},
                                       "max_seq_length": int(cfg["max_seq_length"]), "passages": len(passages)})
    log.info("wrote %s", OUT_DIR)


if __name__ == "__main__":
    run_main(main)
