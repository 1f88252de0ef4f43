"""Stage 3a, baselines: score what the fine-tuned model must beat, once per held-out set and base model.

It depends only on the held-out data, model.base and the encoding settings, so an experiment on the
training recipe never re-scores the base model or BM25 (DVC skips this stage).

Reads   params: model.base, evaluate.depth, encode.*
        files:  data/prepared/{test,testsets/*,val,val_users}/, data/passages.jsonl (a set judging the served
                sections is scored on the served passages, as the index serves them: pipeline/eval/heldout.scored_set)
Writes  reports/baselines/   runs (top-`depth` passages per query) of the base model and BM25 on every held-out
                             set (<set>_base.json, <set>_bm25.json), of the base model on both validation sets,
                             and the base model's (query, positive) / (query, hardest negative) cosine scores on
                             the main test set

    python -m pipeline.stages.baselines
"""

from __future__ import annotations

import logging

from pipeline.embeddings import encode_cached
from pipeline.eval.heldout import held_out_sets, scored_set
from pipeline.eval.metrics import pair_scores
from pipeline.files import atomic_dir, read_jsonl
from pipeline.models import load_model, local_model_path, pick_precision
from pipeline.params import load_params, require_tracked, run_main
from pipeline.paths import BASELINES, PASSAGES, PREPARED
from pipeline.retrieval import bm25_run, dense_run, save_run

log = logging.getLogger("pipeline.baselines")


def main() -> None:
    depth = int(load_params("evaluate")["depth"])
    enc = load_params("encode")
    base = load_params("model")["base"]
    require_tracked("baselines", {"model.base": local_model_path(base)})
    batch_size, precision = int(enc["batch_size"]), pick_precision(enc["precision"], "encode.precision")
    model = load_model(base, max_seq_length=int(enc["max_seq_length"]))
    served = read_jsonl(PASSAGES)

    with atomic_dir(BASELINES) as out:
        for name, folder in {**held_out_sets(PREPARED), "val": PREPARED / "val", "val_users": PREPARED / "val_users"}.items():
            corpus, queries, qrels, section_of = scored_set(folder, served)
            log.info("%s: %d queries, %d passages%s", name, len(queries), len(corpus),
                     " (the served passages)" if section_of else "")
            run, q_emb, c_emb = dense_run(model, corpus, queries, depth, batch_size, precision, encode_cached)
            save_run(out / f"{name}_base.json", run)
            if name.startswith("val"):  # the validation sets: FAQ-style, and as users write; no BM25 needed
                continue
            save_run(out / f"{name}_bm25.json", bm25_run(corpus, queries, depth))
            if name == "test":
                pair_scores(run, qrels, q_emb, c_emb, queries, corpus, section_of).to_csv(
                    out / "test_base_pair_scores.csv", index=False)
    log.info("wrote %s", BASELINES)


if __name__ == "__main__":
    run_main(main)
