"""Stage 4, index: the served passages encoded by the served model into a FAISS index, with BM25 beside it.

Two stages of dvc.yaml run this module, one per model, so that a new training run re-encodes the knowledge base
with the new model only: the base model's index (for `compare` and `search --model base`) depends on nothing
training reads, and DVC keeps it, as it keeps the baselines.

Reads   params: model.base, encode.*, index.*, evaluate.rrf_k and evaluate.depth (the hybrid, as evaluated)
        files:  data/passages.jsonl (the passages evaluation scored, cut by the passages stage), models/finetuned/
                and reports/serve.json (finetuned: evaluate's decision, the base model when the fine-tuned one lost
                on a guard set, and the "no good match" threshold calibrated for the served model),
                data/prepared/{val,val_users}/queries.jsonl (an approximate index's recall is measured on them)
Writes  models/index/        (finetuned) or models/index_base/ (base):
            passages.jsonl   one passage a line, as in data/passages.jsonl
            dense.faiss      inner product of unit vectors (= cosine): exact, or IVF above index.approximate_above
            bm25/            bm25s index of the same texts, for the hybrid mode
            model/           a copy of the model that encoded it: the folder is one self-contained version
            info.json        the model that encoded it (name, its path here, sha256 of its files), the encoding
                             settings, which model was served and why, the no-match threshold, for an approximate
                             index its recall@10 against exact search, and the version: {id, built, passages}

The folder is built beside the served one and swapped in by renames (pipeline.files.atomic_dir; dvc.yaml marks it
`persist` so that DVC does not delete it first): a running service keeps answering from the old version, notices the
new version id in info.json and loads it whole before switching (pipeline/serving/versions.py). A failed build
leaves the old version.

    python -m pipeline.stages.index            # the served model (the fine-tuned one, unless evaluate said otherwise)
    python -m pipeline.stages.index base       # the base model
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import faiss

from pipeline.data.readers import passage_text, read_beir
from pipeline.embeddings import encode_cached
from pipeline.files import atomic_dir, read_jsonl, write_json
from pipeline.models import load_model, local_model_path, pick_precision
from pipeline.params import load_params, require_tracked, run_main
from pipeline.paths import FINETUNED, INDEX_DIRS, PASSAGES, PREPARED, SERVE
from pipeline.retrieval import bm25_index
from pipeline.serving.index_files import build_index, copy_model, version_record

log = logging.getLogger("pipeline.index")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode the served passages into a FAISS index.")
    parser.add_argument("model", nargs="?", default="finetuned", choices=sorted(INDEX_DIRS))
    name = parser.parse_args(argv).model
    cfg, enc = load_params("index"), load_params("encode")
    base = load_params("model")["base"]
    hybrid = {k: int(v) for k, v in load_params("evaluate").items() if k in ("rrf_k", "depth")}
    require_tracked("index" if name == "finetuned" else "index_base", {"model.base": local_model_path(base)})
    served = {"model": "base", "reason": "the base model's own index"}
    if name == "finetuned":  # what evaluate decided: the base model when the fine-tuned one lost on a guard set
        served = json.loads(SERVE.read_text(encoding="utf-8"))
        if served["model"] == "base":
            log.warning("serving the base model, not the fine-tuned one: %s", served["reason"])
    model_ref = str(FINETUNED) if served["model"] == "finetuned" else base
    precision = pick_precision(enc["precision"], "encode.precision")
    passages = read_jsonl(PASSAGES)
    texts = [passage_text(p["title"], p["heading"], p["text"]) for p in passages]
    model = load_model(model_ref, max_seq_length=int(enc["max_seq_length"]))
    target = INDEX_DIRS[name]
    with atomic_dir(target) as out:
        start = time.perf_counter()
        vectors = encode_cached(model, texts, int(enc["batch_size"]), precision).cpu().numpy()
        encode_seconds = time.perf_counter() - start
        questions = None  # an approximate index's recall is measured on the validation questions, encoded as served
        if len(vectors) > int(cfg["approximate_above"]):
            # their own name: `texts` is still to be indexed by BM25 below
            asked = [q for name in ("val", "val_users") for q in read_beir(PREPARED / name)[1].values()]
            questions = encode_cached(model, asked, int(enc["batch_size"]), precision).cpu().numpy()
        index, kind = build_index(vectors, cfg, questions)
        faiss.write_index(index, str(out / "dense.faiss"))
        bm25_index(texts).save(str(out / "bm25"))
        (out / "passages.jsonl").write_text(PASSAGES.read_text(encoding="utf-8"), encoding="utf-8")
        identity = copy_model(model_ref, out)
        settings = {"model": identity["sha256"], "max_seq_length": int(enc["max_seq_length"]), "precision": precision,
                    "hybrid": hybrid, "no_match_threshold": served.get("no_match", {}).get("threshold")}
        write_json(out / "info.json", {  # written last: a reader that finds it finds the rest of this version
            "model": identity, "served": served["model"], "reason": served.get("reason", "no guard set lost"),
            **{key: settings[key] for key in ("max_seq_length", "precision", "hybrid", "no_match_threshold")},
            "passages": len(passages), "index": kind,
            "version": version_record(out, settings, len(passages))})
    # no passages/s here: the vectors are usually evaluate's, from the embedding cache; the export stage measures
    # each backend's speed on a fixed sample (reports/export.json)
    log.info("indexed %d passages of %s (%s; vectors in %.1f s) into %s", len(texts), model_ref, precision,
             encode_seconds, target)


if __name__ == "__main__":
    run_main(main)
