"""Stage 3a, baselines: score what the fine-tuned model must beat, once per held-out set and base model.

It depends only on the held-out data, model.base and the encoding settings, so an experiment on the
training recipe never re-scores the base model or BM25 (DVC skips this stage).

Reads   params: model.base, evaluate.depth, encode.*
        files:  data/prepared/{test,testsets/*,val,val_users}/, data/passages.jsonl (a set judging the served
                sections is scored on the served passages, as the index serves them: pipeline/retrieval.scored_set)
Writes  reports/baselines/   runs (top-`depth` passages per query) of the base model and BM25 on every held-out
                             set (<set>_base.json, <set>_bm25.json), of the base model on both validation sets,
                             and the base model's (query, positive) / (query, hardest negative) cosine scores on
                             the main test set

    python -m pipeline.baselines
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common import (
    atomic_dir,
    load_model,
    load_params,
    local_model_path,
    pick_precision,
    read_jsonl,
    require_tracked,
    run_main,
)
from pipeline.retrieval import bm25_run, dense_run, held_out_sets, pair_scores, save_run, scored_set

log = logging.getLogger("pipeline.baselines")
PREPARED = Path("data/prepared")
OUT_DIR = Path("reports/baselines")
PASSAGES = Path("data/passages.jsonl")


def main() -> None:
    depth = int(load_params("evaluate")["depth"])
    enc = load_params("encode")
    base = load_params("model")["base"]
    require_tracked("baselines", {"model.base": local_model_path(base)})
    batch_size, precision = int(enc["batch_size"]), pick_precision(enc["precision"], "encode.precision")
    model = load_model(base, max_seq_length=int(enc["max_seq_length"]))
    served = read_jsonl(PASSAGES)

    with atomic_dir(OUT_DIR) as out:
        for name, folder in {**held_out_sets(PREPARED), "val": PREPARED / "val", "val_users": PREPARED / "val_users"}.items():
            corpus, queries, qrels, section_of = scored_set(folder, served)
            log.info("%s: %d queries, %d passages%s", name, len(queries), len(corpus),
                     " (the served passages)" if section_of else "")
            run, q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size, precision)
            save_run(out / f"{name}_base.json", run)
            if name.startswith("val"):  # the validation sets: FAQ-style, and as users write; no BM25 needed
                continue
            save_run(out / f"{name}_bm25.json", bm25_run(corpus, queries, depth))
            if name == "test":
                pair_scores(run, qrels, q_emb, c_emb, queries, corpus, section_of).to_csv(
                    out / "test_base_pair_scores.csv", index=False)
    log.info("wrote %s", OUT_DIR)


if __name__ == "__main__":
    run_main(main)
