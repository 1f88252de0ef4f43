"""Stage 3a, baselines: score what the fine-tuned model must beat, once per held-out set and base model.

It depends only on the held-out data, model.base and the encoding settings, so an experiment on the
training recipe never re-scores the base model or BM25 (DVC skips this stage).

Reads   params: model.base, evaluate.depth, evaluate.max_seq_length, evaluate.batch_size
        files:  data/prepared/{test,testsets/*,val,val_users}/
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
    read_beir,
    require_tracked,
    run_main,
)
from pipeline.retrieval import bm25_run, dense_run, held_out_sets, pair_scores, save_run

log = logging.getLogger("pipeline.baselines")
PREPARED = Path("data/prepared")
OUT_DIR = Path("reports/baselines")


def main() -> None:
    cfg = load_params("evaluate")
    base = load_params("model")["base"]
    require_tracked("baselines", {"model.base": local_model_path(base)})
    depth, batch_size = int(cfg["depth"]), int(cfg["batch_size"])
    model = load_model(base, max_seq_length=int(cfg["max_seq_length"]))

    with atomic_dir(OUT_DIR) as out:
        for name, folder in held_out_sets(PREPARED).items():
            corpus, queries, qrels = read_beir(folder)
            log.info("%s: %d queries, %d passages", name, len(queries), len(corpus))
            run, q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size)
            save_run(out / f"{name}_base.json", run)
            save_run(out / f"{name}_bm25.json", bm25_run(corpus, queries, depth))
            if name == "test":
                pair_scores(run, qrels, q_emb, c_emb, queries, corpus).to_csv(out / "test_base_pair_scores.csv",
                                                                             index=False)
        for name in ("val", "val_users"):  # the validation sets: FAQ-style, and as users write
            corpus, queries, _ = read_beir(PREPARED / name)
            save_run(out / f"{name}_base.json", dense_run(model, corpus, queries, depth, batch_size)[0])
    log.info("wrote %s", OUT_DIR)


if __name__ == "__main__":
    run_main(main)
