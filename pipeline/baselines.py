"""Stage 3a, baselines: score what the fine-tuned model must beat, once per held-out set and base model.

It depends only on the held-out data, model.base and the encoding settings, so an experiment on the
training recipe never re-scores the base model or BM25 (DVC skips this stage).

Reads   params: model.base, evaluate.depth, evaluate.max_seq_length, evaluate.batch_size
        files:  data/prepared/test/, data/prepared/val/, data/prepared/val_noisy/
Writes  reports/baselines/   runs (top-`depth` passages per query) of the base model and BM25 on the test set,
                             of the base model on the clean and noisy validation questions, and the base model's
                             (query, positive) / (query, hardest negative) cosine scores on the test set

    python -m pipeline.baselines
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common import atomic_dir, load_model, load_params, read_beir, run_main
from pipeline.retrieval import bm25_run, dense_run, pair_scores, save_run, validation_runs

log = logging.getLogger("pipeline.baselines")
PREPARED = Path("data/prepared")
OUT_DIR = Path("reports/baselines")


def main() -> None:
    cfg = load_params("evaluate")
    base = load_params("model")["base"]
    depth, batch_size = int(cfg["depth"]), int(cfg["batch_size"])
    model = load_model(base, max_seq_length=int(cfg["max_seq_length"]))

    with atomic_dir(OUT_DIR) as out:
        corpus, queries, qrels = read_beir(PREPARED / "test")
        log.info("test set: %d queries, %d passages", len(queries), len(corpus))
        run, q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size)
        save_run(out / "test_base.json", run)
        pair_scores(run, qrels, q_emb, c_emb, queries, corpus).to_csv(out / "test_base_pair_scores.csv", index=False)
        save_run(out / "test_bm25.json", bm25_run(corpus, queries, depth))

        # Validation questions, clean and as users type them: the same corpus, encoded once.
        val_run, noisy_run, _ = validation_runs(model, PREPARED, depth, batch_size)
        save_run(out / "val_base.json", val_run)
        save_run(out / "val_noisy_base.json", noisy_run)
    log.info("wrote %s", OUT_DIR)


if __name__ == "__main__":
    run_main(main)
