"""Stage 2, train: fine-tune the base sentence-transformers model on the prepared tuples.

Reads   params: model.base, train.*, encode.precision (the merge weight is chosen at it); files: data/prepared/train.jsonl, data/prepared/val/, data/prepared/val_users/
Writes  models/finetuned/         the fine-tuned model (safetensors): the checkpoint with the best validation score,
                                  merged with the base model at the weight whose smaller validation gain is largest
        reports/train/            dvclive logs: loss and validation metrics per step, metrics.json summary
                                  (both written aside and moved into place together when training succeeded)
        .checkpoints/train/<key>/ while it runs: checkpoints, named by a hash of the inputs; a run killed mid-way
                                  resumes from the last one when re-run on the same inputs, to the same weights
                                  (pipeline/training/resume.py); removed when training succeeded

The validation score is the mean NDCG@10 of the FAQ-style and the users' validation sets (pipeline/training/validation.py).

    python -m pipeline.stages.train

On a machine with several GPUs it re-launches itself under torchrun, one process per GPU (the number of processes
is the hardware's, never a param); `torchrun --nproc_per_node N -m pipeline.stages.train` runs it so by hand (gloo on the
CPU, as tests/test_ddp.py does). Each process trains on its own batches, the loss gathers them into one softmax, and
only rank 0 writes the model and the logs (pipeline/training/distributed.py).

The story, in the order of the sentence-transformers training examples:
1. load the base model  2. load the data  3. the loss  4. the training arguments
5. evaluate before  6. train  7. evaluate after, merged with the base model at each weight  8. save
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time

import torch

from pipeline.files import atomic_outputs, read_jsonl
from pipeline.models import load_model, local_model_path, pick_precision
from pipeline.params import InputError, load_params, require_tracked, run_main
from pipeline.paths import FINETUNED, PREPARED, TRAIN_LOGS
from pipeline.training import distributed, resume
from pipeline.training.args import batch_sampler, set_dropout, steps_per_epoch, training_arguments
from pipeline.training.callbacks import dvclive_callback
from pipeline.training.losses import build_loss
from pipeline.training.merge import merge_with_base
from pipeline.training.validation import BEST_METRIC, VALIDATION_SETS, kept_evaluation, validation

log = logging.getLogger("pipeline.train")


def main() -> None:
    from dvclive import Live
    from accelerate.utils import extract_model_from_parallel
    from sentence_transformers import SentenceTransformerTrainer

    # Every GPU, whatever params say: `dvc repro` on an N-GPU machine trains on N (CUDA_VISIBLE_DEVICES=0: on one)
    if distributed.relaunch_on_every_gpu():
        return
    rank, world = distributed.start()
    cfg = load_params("train")
    base = load_params("model")["base"]
    require_tracked("train", {"model.base": local_model_path(base)})
    torch.manual_seed(int(cfg["seed"]))

    # 1. Load the base model (device chosen at run time: CUDA if present, else CPU)
    model = load_model(base, max_seq_length=int(cfg["max_seq_length"]))
    log.info("base model %s on %s, max_seq_length %d", base, model.device, model.max_seq_length)
    if set_dropout(model, cfg["dropout"]):
        log.info("dropout set to %s", cfg["dropout"])

    # 2. Data: training tuples, and the two validation sets (FAQ-style, and as users write) that choose the checkpoint
    train_rows = read_jsonl(PREPARED / "train.jsonl")
    if not train_rows:
        raise InputError(f"{PREPARED / 'train.jsonl'}: no training rows")
    evaluator = validation(PREPARED)

    # 3. Loss, and how batches are drawn
    guide = None
    if cfg["guide"] not in (None, "base"):
        raise InputError(f"params.yaml: train.guide {cfg['guide']!r} is not null or base")
    if cfg["guide"] == "base":  # GIST: the frozen base model says which in-batch negatives are answers too
        guide = load_model(base, max_seq_length=int(cfg["max_seq_length"]))
    loss, train_dataset = build_loss(cfg["loss"], model, train_rows, cfg, guide)
    log.info("%d training rows, columns %s, loss %s", len(train_dataset), train_dataset.column_names, cfg["loss"])
    sampler = batch_sampler(cfg, train_rows, world)

    # 4. Training arguments; one checkpoint folder for all processes, named by the inputs: rank 0 saves, every one
    # loads the best back, and a re-run on the same inputs resumes from the last checkpoint a kill left
    batch_size = int(cfg["batch_size"])
    batches = steps_per_epoch(sampler, train_dataset, batch_size, world, int(cfg["seed"]))
    # the rows a step really holds: one process keeps every row once an epoch, grouped batches short where rows clash
    # (counted by the sampler above); several keep full batches only
    rows_per_step = batch_size if world > 1 else len(train_dataset) / batches
    if world > 1:
        log.info("%d processes, batch %d each: %d pairs a step, %d steps an epoch", world, batch_size,
                 world * batch_size, batches)
    precision = pick_precision(cfg["precision"], "train.precision")
    settings = {"train": cfg, "model.base": base, "precision": precision, "processes": world,
                "device": model.device.type}
    key = resume.inputs_key(settings, base, [PREPARED / "train.jsonl", *(PREPARED / n for n in VALIDATION_SETS)])
    checkpoints, last = resume.checkpoint_folder(key, rank, world)
    args = training_arguments(cfg, sampler, batches, checkpoints, precision, model.device.type, resumed=bool(last))

    # dvclive writes aside, moved into place with the model at the end: a failed run leaves the previous
    # reports/train and models/finetuned as they were, never new logs beside an old model. Rank 0 only. A resumed
    # run writes the log its checkpoint restores again (pipeline/training/callbacks.py).
    live_tmp = distributed.shared_tempdir(rank, world, prefix="dvclive-")
    live = Live(dir=str(live_tmp), dvcyaml=None, save_dvc_exp=False, report=None) if rank == 0 else None
    with live or contextlib.nullcontext():
        if live:
            live.log_params({k: cfg[k] for k in sorted(cfg)})
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator,
            callbacks=[dvclive_callback(live)] if live else [],
        )
        # 5-6. Evaluate before (eval_on_start) and train: every check is logged to dvclive
        start = time.perf_counter()
        if last:
            trainer.train(resume_from_checkpoint=str(last))
        else:
            trainer.train()
        train_seconds = time.perf_counter() - start
        first_step = resume.step(last) if last else 0
        steps_here = trainer.state.global_step - first_step  # this run's, for the speed
        # the validation checks' share of that time (the trainer times each one): bench/train_pace.py sets it apart
        # from the steps when it compares the stage with the plain sentence-transformers loop
        checks_seconds = sum(h["eval_runtime"] for h in trainer.state.log_history
                             if "eval_runtime" in h and (h["step"] > first_step or not last))
        history = [h for h in trainer.state.log_history if f"eval_{BEST_METRIC}" in h]
        kept = kept_evaluation(trainer.state.log_history, trainer.state.best_global_step) or history[-1]

        # 7. Evaluate after: the kept checkpoint merged with the base model at each weight, the best one loaded.
        # accelerate wrapped model.forward in the training precision's autocast and leaves it so; the weight is
        # chosen at the precision evaluation reports (encode.precision), so the wrapper comes off first
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        scored_precision = pick_precision(load_params("encode")["precision"], "encode.precision")

        def validate_as_scored(evaluator, model):
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=scored_precision == "bf16"):
                return distributed.validate(evaluator, model)

        base_state = load_model(base, device=str(model.device)).state_dict()
        alpha, merges, before = merge_with_base(model, base_state, evaluator, cfg["merge_alphas"], validate_as_scored)
        after = merges[alpha]
        log.info("validation (mean NDCG@10 of val and val_users): %.4f base, %.4f after (step %s, merge weight %.2f%s);"
                 " %.1f min training", before[BEST_METRIC], after[BEST_METRIC], kept.get("step"), alpha,
                 ": the base model itself, since every trained candidate lost on validation" if alpha == 0 else "",
                 train_seconds / 60)
        summary = {
            "val_ndcg@10_before": round(before["val_cosine_ndcg@10"], 4),
            "val_ndcg@10_best": round(after["val_cosine_ndcg@10"], 4),
            "val_mrr@10_best": round(after["val_cosine_mrr@10"], 4),
            "val_users_ndcg@10_before": round(before["val_users_cosine_ndcg@10"], 4),
            "val_users_ndcg@10_best": round(after["val_users_cosine_ndcg@10"], 4),
            "val_users_mrr@10_best": round(after["val_users_cosine_mrr@10"], 4),
            "merge_alpha": alpha,
            **{f"merge_{name}_ndcg@10": {f"{a:g}": m[f"{name}_cosine_ndcg@10"] for a, m in merges.items()}
               for name in VALIDATION_SETS},
            "best_step": int(kept.get("step", 0)),
            "steps": int(trainer.state.global_step),
            "train_minutes": round(train_seconds / 60, 2),
            "validation_minutes": round(checks_seconds / 60, 2),
            "pairs_per_second": round(steps_here * rows_per_step * world / train_seconds, 2),
            "batch_fill": round(rows_per_step / batch_size, 3),
            "device": str(model.device.type),
            "processes": world,
            "precision": precision,
        }
        if live:
            live.summary = summary

    # 8. Save the chosen model as safetensors, and the logs beside it: rank 0, once every process got here (none died
    # mid-way), and the renames last of all
    distributed.wait_for_all(world)
    if rank == 0:
        with atomic_outputs(TRAIN_LOGS, FINETUNED) as (live_out, tmp):
            model.save_pretrained(str(tmp), safe_serialization=True)
            shutil.copytree(live_tmp, live_out)
        shutil.rmtree(live_tmp, ignore_errors=True)
        resume.remove(checkpoints)
        log.info("wrote %s and %s", FINETUNED, TRAIN_LOGS)
    distributed.finish(world)


if __name__ == "__main__":
    run_main(main)
