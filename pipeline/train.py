"""Stage 2, train: fine-tune the base sentence-transformers model on the prepared tuples.

Reads   params: model.base, train.*; files: data/prepared/train.jsonl, data/prepared/val/, data/prepared/val_users/
Writes  models/finetuned/         the fine-tuned model (safetensors): the checkpoint with the best validation score,
                                  merged with the base model at the weight whose smaller validation gain is largest
        reports/train/            dvclive logs: loss and validation metrics per step, metrics.json summary
                                  (both written aside and moved into place together when training succeeded)

The validation score is the mean NDCG@10 of two sets: the FAQ-style validation split and questions as users write
them (the user's own, or messages made by pipeline/user_questions.py). A model that gains on the FAQ's wording and
loses on users' cannot win on it.

    python -m pipeline.train

On a machine with several GPUs it re-launches itself under torchrun, one process per GPU (the number of processes
is the hardware's, never a param); `torchrun --nproc_per_node N -m pipeline.train` runs it so by hand (gloo on the
CPU, as tests/test_ddp.py does). Each process trains on its own batches, the loss gathers them into one softmax, and
only rank 0 writes the model and the logs (pipeline/distributed.py).

The story, in the order of the sentence-transformers training examples:
1. load the base model  2. load the data  3. the loss  4. the training arguments
5. evaluate before  6. train  7. evaluate after, merged with the base model at each weight  8. save
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from pipeline import distributed
from pipeline.common import (
    InputError,
    atomic_dir,
    load_model,
    load_params,
    local_model_path,
    pick_precision,
    read_jsonl,
    require_tracked,
    run_main,
)
from pipeline.retrieval import validation_evaluator
from pipeline.sampler import GroupedNoDuplicatesBatchSampler

log = logging.getLogger("pipeline.train")
PREPARED = Path("data/prepared")
MODEL_DIR = Path("models/finetuned")
LIVE_DIR = Path("reports/train")
BEST_METRIC = "sequential_score"  # the mean of val_cosine_ndcg@10 and val_users_cosine_ndcg@10


def dvclive_callback(live):
    """Log every trainer record to dvclive at the trainer's own global step.

    dvclive's DVCLiveCallback advances its step once per log *event*, so the loss and the validation
    curves would not share an x-axis; this keeps `step` = optimizer steps in every TSV.
    """
    from transformers import TrainerCallback

    class StepAlignedDVCLive(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            live.step = state.global_step
            for key, value in (logs or {}).items():
                if key in ("loss", "grad_norm", "learning_rate") or key.startswith("eval_val_"):
                    live.log_metric(key.replace("eval_", "eval/", 1), value)
            live.make_summary()

    return StepAlignedDVCLive()


def merged_state(base: dict, tuned: dict, alpha: float) -> dict:
    """WiSE-FT (Wortsman et al. 2022) / LM-Cocktail's merge: (1 - alpha) * base + alpha * fine-tuned, weight by weight.

    Fine-tuning on one FAQ's wording moves the model away from what it knew of every other wording; averaging
    with the base weights keeps most of the gain and much of that knowledge (bench/README.md).
    """
    return {k: torch.lerp(base[k].to(v.dtype), v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}


def choose_merge(merges: dict[float, dict], before: dict, keys: list[str], floor: float = 0.005) -> float:
    """The merge weight whose smaller gain, over the validation sets, is the largest: each set's gain over the base
    model (`before`, the step-0 evaluation) as a share of the best gain any weight reaches on it.

    Shares, not raw scores: the FAQ-style split gains 0.15 NDCG@10 and the users' questions 0.01, and a plain mean
    lets the first outvote the second; on MedQuAD it then chose a weight that lost on real users' questions
    (bench/README.md). A best gain under `floor` counts as `floor`, so that noise is not divided by noise. Ties go
    to the larger mean score.
    """
    base = {k: before[f"eval_{k}"] for k in keys}
    best = {k: max(max(m[k] for m in merges.values()) - base[k], floor) for k in keys}
    share = {a: min((m[k] - base[k]) / best[k] for k in keys) for a, m in merges.items()}
    return max(merges, key=lambda a: (round(share[a], 4), round(merges[a][BEST_METRIC], 4), a))


def kept_evaluation(log_history: list[dict], best_step: int | None, metric: str = f"eval_{BEST_METRIC}") -> dict | None:
    """The validation record of the checkpoint training kept: the evaluation at trainer.state.best_global_step.

    The step-0 evaluation (eval_on_start, the untrained model) is never it, however well it scored: no checkpoint
    is saved at step 0, so load_best_model_at_end cannot go back to it (transformers does not count it for
    best_global_step either). With no best step recorded the final weights are kept: their (last) evaluation.
    None when nothing after step 0 was evaluated.
    """
    trained = [h for h in log_history if metric in h and h.get("step", 0) > 0]
    if best_step:
        return next((h for h in trained if h["step"] == best_step), None)
    return trained[-1] if trained else None


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


def in_batch_negatives_loss(name: str, model, cfg: dict):
    """(Cached)MultipleNegativesRankingLoss with the options params.yaml gives, passed to sentence-transformers as
    they are: which similarity terms enter the softmax (GTE: all four directions), its scale (= 1/temperature), and
    hardness weighting of the negatives (Lan et al. 2025)."""
    from sentence_transformers.sentence_transformer import losses

    options = {"scale": float(cfg["scale"]), "directions": tuple(cfg["directions"]),
               "hardness_mode": cfg["hardness_mode"], "hardness_strength": float(cfg["hardness_strength"])}
    if name == "CachedMultipleNegativesRankingLoss":
        # GradCache: a large effective batch (more in-batch negatives) in the memory of a small one
        options["mini_batch_size"] = int(cfg["mini_batch_size"])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # every process's batch enters every softmax: N processes with batch b train as one batch of N x b
        options["gather_across_devices"] = True
    try:
        return getattr(losses, name)(model, **options)
    except ValueError as e:  # the library's own check of the options
        raise InputError(f"params.yaml: train: {e}") from None


def build_loss(name: str, model, train_rows: list[dict], cfg: dict):
    """The loss named in params, and the training dataset in the column layout that loss expects."""
    from sentence_transformers.sentence_transformer import losses

    negatives = sorted(k for k in train_rows[0] if k.startswith("negative_"))
    columns = ["anchor", "positive", *negatives]
    if name in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"):
        loss = in_batch_negatives_loss(name, model, cfg)
    elif name == "TripletLoss":
        if not negatives:
            raise InputError("params.yaml: train.loss TripletLoss needs prepare.negatives.num >= 1")
        loss, columns = losses.TripletLoss(model), ["anchor", "positive", "negative_1"]
    elif name == "CosineSimilarityLoss":
        # pairs labelled 1.0 (question, answer) and 0.0 (question, mined negative), as in the seed article
        rows = [(r["anchor"], r["positive"], 1.0) for r in train_rows]
        rows += [(r["anchor"], r[n], 0.0) for r in train_rows for n in negatives]
        data = Dataset.from_dict({"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
                                  "score": [r[2] for r in rows]})
        return losses.CosineSimilarityLoss(model), data
    else:
        raise InputError(f"params.yaml: train.loss {name!r} is not one of MultipleNegativesRankingLoss, "
                         "CachedMultipleNegativesRankingLoss, TripletLoss, CosineSimilarityLoss")
    if cfg.get("matryoshka_dims"):
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=list(cfg["matryoshka_dims"]))
    data = Dataset.from_dict({c: [r[c] for r in train_rows] for c in columns})
    return loss, data


def main() -> None:
    from dvclive import Live
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

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
    evaluators = [validation_evaluator(PREPARED / name, name, batch_size=64) for name in ("val", "val_users")]
    evaluator = SequentialEvaluator(evaluators, main_score_function=lambda scores: float(np.mean(scores)))

    # 3. Loss, and how batches are drawn: in-batch negatives are only negatives if no text repeats in a batch
    loss, train_dataset = build_loss(cfg["loss"], model, train_rows, cfg)
    log.info("%d training rows, columns %s, loss %s", len(train_dataset), train_dataset.column_names, cfg["loss"])
    batch_sampler = BatchSamplers.NO_DUPLICATES
    if cfg["group_batches"] and "MultipleNegativesRankingLoss" in cfg["loss"] and "group" in train_rows[0]:
        batch_sampler = functools.partial(GroupedNoDuplicatesBatchSampler, groups=[r["group"] for r in train_rows])
        log.info("batches of whole groups: %d groups", len({r["group"] for r in train_rows}))

    # 4. Training arguments. Under DDP sentence-transformers keeps only full batches (the loss gathers one size from
    # every process), every process draws the same ones (seeded, not by rank), and accelerate deals them round-robin
    # in whole rounds: each process takes batches // world steps, the same number, or DDP would hang
    batch_size = int(cfg["batch_size"])
    drop_last = world > 1
    batches = len(train_dataset) // batch_size if drop_last else math.ceil(len(train_dataset) / batch_size)
    if batch_sampler is not BatchSamplers.NO_DUPLICATES:  # grouped: rows that clash wait, which can add batches
        batches = len(batch_sampler(train_dataset, batch_size=batch_size, drop_last=drop_last, seed=int(cfg["seed"])))
    batches //= world
    if not batches:
        raise InputError(f"{len(train_dataset)} training rows make no full batch of {batch_size} for each of "
                         f"{world} processes: lower train.batch_size")
    if world > 1:
        log.info("%d processes, batch %d each: %d pairs a step, %d steps an epoch", world, batch_size,
                 world * batch_size, batches)
    steps = batches * float(cfg["epochs"])
    if int(cfg["max_steps"]) > 0:
        steps = min(steps, int(cfg["max_steps"]))
    eval_steps = max(1, math.ceil(steps / max(1, int(cfg["evaluations"]))))
    precision = pick_precision(cfg["precision"], "train.precision")
    # one checkpoint folder for all processes: rank 0 saves there, and every one loads the best back at the end
    checkpoints = distributed.shared_tempdir(rank, world, prefix="checkpoints-")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=float(cfg["epochs"]),
        max_steps=int(cfg["max_steps"]),
        per_device_train_batch_size=batch_size,
        learning_rate=float(cfg["learning_rate"]),
        warmup_steps=float(cfg["warmup_ratio"]),  # transformers 5: a float below 1 is a fraction of the steps
        bf16=precision == "bf16",
        use_cpu=model.device.type == "cpu",  # transformers only allows bf16 on the CPU when told so
        batch_sampler=batch_sampler,
        eval_strategy="steps",
        eval_steps=eval_steps,
        eval_on_start=True,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{BEST_METRIC}",
        logging_steps=max(1, min(50, eval_steps // 4)),
        report_to="none",
        seed=int(cfg["seed"]),
        data_seed=int(cfg["seed"]),
        dataloader_num_workers=0,
    )

    # dvclive writes aside (beside the checkpoints), moved into place with the model at the end: a failed run leaves
    # the previous reports/train and models/finetuned as they were, never new logs beside an old model. Rank 0 only.
    live_tmp = checkpoints / "dvclive"
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
        trainer.train()
        train_seconds = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if f"eval_{BEST_METRIC}" in h]
        before = history[0]
        kept = kept_evaluation(trainer.state.log_history, trainer.state.best_global_step) or history[-1]

        # 7. Evaluate after: the kept checkpoint merged with the base model at each weight (1.0: as trained)
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        base_state = load_model(base, device=str(model.device)).state_dict()
        merges = {}
        for alpha in sorted(float(a) for a in cfg["merge_alphas"]):
            model.load_state_dict(merged_state(base_state, tuned, alpha))
            merges[alpha] = distributed.validate(evaluator, model)  # the same scores, so the same choice, on every process
            log.info("merge %.2f: val NDCG@10 %.4f, val_users NDCG@10 %.4f", alpha,
                     merges[alpha]["val_cosine_ndcg@10"], merges[alpha]["val_users_cosine_ndcg@10"])
        alpha = choose_merge(merges, before, [f"{name}_cosine_ndcg@10" for name in ("val", "val_users")])
        model.load_state_dict(merged_state(base_state, tuned, alpha))
        after = merges[alpha]
        log.info("validation (mean NDCG@10 of val and val_users): %.4f before, %.4f after (step %s, merge weight %.2f);"
                 " %.1f min training", before[f"eval_{BEST_METRIC}"], after[BEST_METRIC],
                 kept.get("step"), alpha, train_seconds / 60)
        summary = {
            "val_ndcg@10_before": round(before["eval_val_cosine_ndcg@10"], 4),
            "val_ndcg@10_best": round(after["val_cosine_ndcg@10"], 4),
            "val_mrr@10_best": round(after["val_cosine_mrr@10"], 4),
            "val_users_ndcg@10_before": round(before["eval_val_users_cosine_ndcg@10"], 4),
            "val_users_ndcg@10_best": round(after["val_users_cosine_ndcg@10"], 4),
            "val_users_mrr@10_best": round(after["val_users_cosine_mrr@10"], 4),
            "merge_alpha": alpha,
            **{f"merge_{name}_ndcg@10": {f"{a:g}": m[f"{name}_cosine_ndcg@10"] for a, m in merges.items()}
               for name in ("val", "val_users")},
            "best_step": int(kept.get("step", 0)),
            "steps": int(trainer.state.global_step),
            "train_minutes": round(train_seconds / 60, 2),
            "pairs_per_second": round(trainer.state.global_step * batch_size * world / train_seconds, 2),
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
        with atomic_dir(LIVE_DIR) as live_out, atomic_dir(MODEL_DIR) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            shutil.copytree(live_tmp, live_out, dirs_exist_ok=True)
        shutil.rmtree(checkpoints, ignore_errors=True)
        log.info("wrote %s and %s", MODEL_DIR, LIVE_DIR)
    distributed.finish(world)


if __name__ == "__main__":
    run_main(main)
