"""How the trainer runs: dropout, batches per epoch, checks, the training arguments.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from pipeline.params import InputError
from pipeline.training.sampler import GroupedNoDuplicatesBatchSampler
from pipeline.training.validation import BEST_METRIC

log = logging.getLogger("pipeline.train")


def set_dropout(model, p) -> int:
    """Set every dropout of the transformer to p (None: keep the base model's own); returns how many were set.

    Dropout is a large part of a CPU training step (attention dropout keeps PyTorch's fused attention off): on
    MedQuAD a step of 64 pairs in bf16 takes 3.3 s without it against 4.0 s with MiniLM's 0.1, and needs 2.8 GB
    of memory against 4.2 GB (bench/README.md). Inference never uses it. The config is updated too, so the saved
    model says how it was trained.
    """
    if p is None:
        return 0
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"params.yaml: train.dropout {p!r} is not null or a number in [0, 1)")
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p, count = float(p), count + 1
        elif isinstance(getattr(module, "attention_dropout", None), float):  # architectures that keep a float
            module.attention_dropout, count = float(p), count + 1
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, float(p))
    return count


def batch_sampler(cfg: dict, train_rows: list[dict], processes: int = 1):
    """How batches are drawn: in-batch negatives are only negatives if no text repeats in a batch; with
    train.group_batches, batches of whole groups (a question's negatives include its own subject's other answers)."""
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    if cfg["group_batches"] and "MultipleNegativesRankingLoss" in cfg["loss"] and "group" in train_rows[0]:
        log.info("batches of whole groups: %d groups", len({r["group"] for r in train_rows}))
        return functools.partial(GroupedNoDuplicatesBatchSampler, groups=[r["group"] for r in train_rows],
                                 processes=processes)
    return BatchSamplers.NO_DUPLICATES


def steps_per_epoch(sampler, dataset, batch_size: int, world: int, seed: int) -> int:
    """Optimizer steps in an epoch for each process. Under DDP sentence-transformers keeps only full batches (the
    loss gathers one size from every process), every process draws the same ones (seeded, not by rank), and
    accelerate deals them round-robin in whole rounds: each process takes batches // world steps, the same number,
    or DDP would hang. Grouped batches: rows that clash wait, which can add batches, so they are counted."""
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    rows, drop_last = len(dataset), world > 1
    batches = rows // batch_size if drop_last else math.ceil(rows / batch_size)
    if sampler is not BatchSamplers.NO_DUPLICATES:
        batches = len(sampler(dataset, batch_size=batch_size, drop_last=drop_last, seed=seed))
    batches //= world
    if not batches:
        raise InputError(f"{rows} training rows make no full batch of {batch_size} for each of {world} processes: "
                         "lower train.batch_size")
    return batches


def logging_steps(eval_steps: int) -> int:
    """Log the loss about 4 times a check (at most every 50 steps), at a step count that divides the checks': a
    checkpoint (saved at each check) then falls on a logging step, so a run resumed from it logs the same losses
    as an uninterrupted one (the trainer keeps no loss summed since the last log in a checkpoint)."""
    target = max(1, min(50, eval_steps // 4))
    return max(d for d in range(1, target + 1) if eval_steps % d == 0)


def training_arguments(cfg: dict, sampler, batches: int, output_dir, precision: str, device_type: str,
                       resumed: bool = False):
    """The trainer's arguments: `train.evaluations` checks spread over the steps, the best checkpoint kept, each
    checkpoint whole (optimizer, scheduler, RNG states) so that a killed run resumes from it (resume.py)."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    steps = batches * float(cfg["epochs"])
    if int(cfg["max_steps"]) > 0:
        steps = min(steps, int(cfg["max_steps"]))
    # counted here rather than passed as a fraction (transformers reads eval_steps < 1 as a share of the steps): with
    # train.evaluations 1 the share would be 1.0, which it reads as "every step", and logging_steps needs the count
    eval_steps = max(1, math.ceil(steps / max(1, int(cfg["evaluations"]))))
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(cfg["epochs"]),
        max_steps=int(cfg["max_steps"]),
        per_device_train_batch_size=int(cfg["batch_size"]),
        learning_rate=float(cfg["learning_rate"]),
        warmup_steps=float(cfg["warmup_ratio"]),  # transformers 5: a float below 1 is a fraction of the steps
        bf16=precision == "bf16",
        use_cpu=device_type == "cpu",  # transformers only allows bf16 on the CPU when told so
        batch_sampler=sampler,
        eval_strategy="steps",
        eval_steps=eval_steps,
        eval_on_start=not resumed,  # a resumed run has the step-0 check in the log its checkpoint restores
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{BEST_METRIC}",
        logging_steps=logging_steps(eval_steps),
        report_to="none",
        seed=int(cfg["seed"]),
        data_seed=int(cfg["seed"]),
        dataloader_num_workers=0,
    )
