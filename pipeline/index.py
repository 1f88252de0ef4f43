"""Stage 4, index: the knowledge base encoded by the fine-tuned model into a FAISS index for the RAG system.

Two stages of dvc.yaml run this module, one per model, so that a new training run re-encodes the knowledge base
with the new model only: the base model's index (for `compare` and `search --model base`) depends on nothing
training reads, and DVC keeps it, as it keeps the baselines.

Reads   params: data.kb, data.faq, data.faq_columns, index.*, model.base
        files:  data.kb documents (one passage per '## ' section), data.faq answers, models/finetuned/ and
                reports/serve.json (finetuned: evaluate's decision; the base model when the fine-tuned one lost on a
                guard set)
Writes  models/index/        (finetuned) or models/index_base/ (base):
            passages.jsonl   one passage a line: title, heading, text, source (file and section or line)
            <model>.faiss    inner-product index of unit vectors (= cosine)
            info.json        which model encoded it (and which was served, and why), at what length and precision

    python -m pipeline.index            # the fine-tuned model
    python -m pipeline.index base       # the base model
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import faiss
import pandas as pd
import torch

from pipeline.common import (
    atomic_dir,
    load_model,
    load_params,
    local_model_path,
    pick_precision,
    read_kb,
    read_records,
    require_tracked,
    run_main,
    write_json,
)
from pipeline.retrieval import encode

log = logging.getLogger("pipeline.index")
MODEL_DIR = Path("models/finetuned")
SERVE = Path("reports/serve.json")
INDEX_DIRS = {"finetuned": Path("models/index"), "base": Path("models/index_base")}


def collect_passages(data: dict, include_faq_answers: bool) -> list[dict]:
    passages = read_kb(data["kb"])
    if include_faq_answers:
        cols = data["faq_columns"]
        for f in data.get("faq") or []:
            df = read_records(f, {"question": cols["question"], "answer": cols["answer"]}, key="data.faq")
            passages += [{"title": r.question, "heading": "", "text": r.answer, "source": r.where}
                         for r in df.itertuples()]
    unique = list({p["text"]: p for p in passages}.values())  # one passage per distinct text
    log.info("%d passages (%d duplicates dropped)", len(unique), len(passages) - len(unique))
    return unique


def build_index(model, texts: list[str], batch_size: int, precision: str) -> faiss.Index:
    # bf16 autocast (matrix products in bf16, the vectors kept as float32): on MedQuAD's 5,000 passages it encodes
    # 1.9x faster on a CPU with AVX512-BF16, and the fine-tuned model scores the same test MRR@10 and NDCG@10
    # to four decimals (bench/README.md).
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        vectors = encode(model, texts, batch_size).float().cpu().numpy()
    # Exact search: a knowledge base of up to ~1M passages is searched in milliseconds by a flat index;
    # an approximate one (HNSW, IVF) only pays for itself beyond that.
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode the knowledge base into a FAISS index.")
    parser.add_argument("model", nargs="?", default="finetuned", choices=sorted(INDEX_DIRS))
    name = parser.parse_args(argv).model
    data, cfg = load_params("data"), load_params("index")
    base = load_params("model")["base"]
    require_tracked("index" if name == "finetuned" else "index_base", {
        "data.kb": data["kb"], "data.faq": data.get("faq") if cfg["include_faq_answers"] else None,
        "model.base": local_model_path(base)})
    served = {"model": "base", "reason": "the base model's own index"}
    if name == "finetuned":  # what evaluate decided: the base model when the fine-tuned one lost on a guard set
        served = json.loads(SERVE.read_text(encoding="utf-8"))
        if served["model"] == "base":
            log.warning("serving the base model, not the fine-tuned one: %s", served["reason"])
    model_ref = str(MODEL_DIR) if served["model"] == "finetuned" else base
    precision = pick_precision(cfg["precision"], "index.precision")
    passages = collect_passages(data, bool(cfg["include_faq_answers"]))
    texts = [f"{p['title']}: {p['heading']}. {p['text']}" if p["heading"] else p["text"] for p in passages]
    model = load_model(model_ref, max_seq_length=int(cfg["max_seq_length"]))
    with atomic_dir(INDEX_DIRS[name]) as out:
        pd.DataFrame(passages).to_json(out / "passages.jsonl", orient="records", lines=True, force_ascii=False)
        faiss.write_index(build_index(model, texts, int(cfg["batch_size"]), precision), str(out / f"{name}.faiss"))
        write_json(out / "info.json", {"models": {name: model_ref}, "served": served["model"],
                                       "reason": served.get("reason", "no guard set lost"),
                                       "max_seq_length": int(cfg["max_seq_length"]), "precision": precision,
                                       "passages": len(passages)})
    log.info("encoded %d passages with %s (%s) into %s", len(texts), model_ref, precision, INDEX_DIRS[name])


if __name__ == "__main__":
    run_main(main)
