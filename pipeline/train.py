"""Stage 2, train: fine-tune the base sentence-transformers model on the prepared tuples.

Reads   params: model.base, train.*; files: data/prepared/train.jsonl, data/prepared/val/
Writes  models/finetuned/         the fine-tuned model (safetensors), the checkpoint with the best validation NDCG@10
        reports/train/            dvclive logs: loss and validation metrics per step, metrics.json summary

    python -m pipeline.train

The story, in the order of the sentence-transformers training examples:
1. load the base model  2. load the data  3. the loss  4. the training arguments
5. evaluate before  6. train  7. evaluate after  8. save
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset

from pipeline.common import InputError, atomic_dir, load_model, load_params, read_beir, read_jsonl, run_main

log = logging.getLogger("pipeline.train")
PREPARED = Path("data/prepared")
MODEL_DIR = Path("models/finetuned")
LIVE_DIR = Path("reports/train")
BEST_METRIC = "val_cosine_ndcg@10"


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


def build_loss(name: str, model, train_rows: list[dict], cfg: dict):
    """The loss named in params, and the training dataset in the column layout that loss expects."""
    from sentence_transformers.sentence_transformer import losses

    negatives = sorted(k for k in train_rows[0] if k.startswith("negative_"))
    columns = ["anchor", "positive", *negatives]
    if name == "MultipleNegativesRankingLoss":
        loss = losses.MultipleNegativesRankingLoss(model)
    elif name == "CachedMultipleNegativesRankingLoss":
        # GradCache: a large effective batch (more in-batch negatives) in the memory of a small one
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=int(cfg["mini_batch_size"]))
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
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    cfg = load_params("train")
    base = load_params("model")["base"]
    torch.manual_seed(int(cfg["seed"]))

    # 1. Load the base model (device chosen at run time: CUDA if present, else CPU)
    model = load_model(base, max_seq_length=int(cfg["max_seq_length"]))
    log.info("base model %s on %s, max_seq_length %d", base, model.device, model.max_seq_length)

    # 2. Data: training tuples, and the validation split for choosing the best checkpoint
    train_rows = read_jsonl(PREPARED / "train.jsonl")
    if not train_rows:
        raise InputError(f"{PREPARED / 'train.jsonl'}: no training rows")
    val_corpus, val_queries, val_qrels = read_beir(PREPARED / "val")
    evaluator = InformationRetrievalEvaluator(
        val_queries, val_corpus, {q: set(d) for q, d in val_qrels.items()}, name="val",
        batch_size=64, show_progress_bar=False, write_csv=False,
    )

    # 3. Loss
    loss, train_dataset = build_loss(cfg["loss"], model, train_rows, cfg)
    log.info("%d training rows, columns %s, loss %s", len(train_dataset), train_dataset.column_names, cfg["loss"])

    # 4. Training arguments
    batch_size = int(cfg["batch_size"])
    steps = math.ceil(len(train_dataset) / batch_size) * float(cfg["epochs"])
    if int(cfg["max_steps"]) > 0:
        steps = min(steps, int(cfg["max_steps"]))
    eval_steps = max(1, math.ceil(steps / max(1, int(cfg["evaluations"]))))
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    checkpoints = Path(tempfile.mkdtemp(prefix="checkpoints-"))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=float(cfg["epochs"]),
        max_steps=int(cfg["max_steps"]),
        per_device_train_batch_size=batch_size,
        learning_rate=float(cfg["learning_rate"]),
        warmup_ratio=float(cfg["warmup_ratio"]),
        bf16=bf16,
        # in-batch negatives are only negatives if the batch holds no repeated text
        batch_sampler=BatchSamplers.NO_DUPLICATES,
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

    LIVE_DIR.mkdir(parents=True, exist_ok=True)
    with Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_params({k: cfg[k] for k in sorted(cfg)})
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator,
            callbacks=[dvclive_callback(live)],
        )
        # 5-7. Evaluate before (eval_on_start), train, evaluate after: every check is logged to dvclive
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if f"eval_{BEST_METRIC}" in h]
        before, best = history[0][f"eval_{BEST_METRIC}"], trainer.state.best_metric
        log.info("validation NDCG@10: %.4f before, %.4f best (step %s); %.1f min training",
                 before, best, trainer.state.best_global_step, train_seconds / 60)
        live.summary = {
            "val_ndcg@10_before": round(before, 4),
            "val_ndcg@10_best": round(float(best), 4),
            "best_step": int(trainer.state.best_global_step or 0),
            "steps": int(trainer.state.global_step),
            "train_minutes": round(train_seconds / 60, 2),
            "pairs_per_second": round(trainer.state.global_step * batch_size / train_seconds, 2),
            "device": str(model.device.type),
        }

    # 8. Save the best checkpoint (loaded back by load_best_model_at_end) as safetensors
    with atomic_dir(MODEL_DIR) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    log.info("wrote %s and %s", MODEL_DIR, LIVE_DIR)


if __name__ == "__main__":
    run_main(main)
