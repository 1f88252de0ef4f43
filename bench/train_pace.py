"""Benchmark: the train stage's pace against the plain sentence-transformers loop, side by side on the same pairs.

    python bench/train_pace.py                          # the bundled data (data/prepared: `dvc repro -s prepare`)
    python bench/train_pace.py --data bench/out/final/data/prepared --rows 4000 --steps 40   # MedQuAD, once
                                                        # run_medquad.py has prepared it from ../shared/bench

Issue 23 item 4 asks the train stage to keep >= 0.95x the pairs per second of a plain SentenceTransformerTrainer
loop. Both train the first --rows rows of train.jsonl for --steps optimizer steps with the project's params.yaml
(model.base, train.loss and its options, train.batch_size, train.precision, train.dropout, train.max_seq_length):

- the stage: `python -m pipeline.stages.train` in its own folder under bench/out/pace/ (git-ignored), as `dvc repro`
  runs it (its batch sampler, callbacks, checkpoints, --evaluations validation checks during training, default the
  project's train.evaluations); its pairs/s is reports/train/metrics.json's (the steps times the batch over the
  time trainer.train() took, checks included: what a user waits for), and the pace of its steps alone (that time
  less the checks', validation_minutes in the same file, which the trainer times). The merge after training is not
  counted.
- the plain loop: SentenceTransformerTrainer with the same model, dataset and loss (pipeline.training.losses
  build_loss, with the library's one forward pass a column: train.length_buckets 1), batch size, learning rate,
  warm-up, seed and precision, no evaluator, no checkpoints, the default
  batch sampler; timed the same way around trainer.train(). The same dropout is set (pipeline.training.args
  set_dropout): dropout changes the cost of a step by itself (1.2x on a CPU), which is the recipe, not the loop.

The rounds alternate (stage, plain, stage, plain, ...) so that both see the same load; it prints each round, the
median pairs/s of each and their ratios (with the checks and of the steps alone), with the CPU model. The checks
cost the same whatever the run's length, so their share here (a few dozen steps) is many times a full run's. Run
it on an idle machine: another process sharing the cores makes both slower by amounts that differ between rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from bench.scale_train import prepared_data, workdir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def stage_pace(work: Path) -> dict:
    import torch

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if torch.cuda.device_count() > 1:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # one process on one GPU, as the plain loop: not re-launched on all of them
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=work, env=env, capture_output=True,
                          text=True)
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"the train stage failed; see {work / 'train.log'}\n{proc.stderr[-3000:]}")
    summary = json.loads((work / "reports" / "train" / "metrics.json").read_text())
    steps_seconds = (summary["train_minutes"] - summary["validation_minutes"]) * 60
    # steps x batch size a second, as the plain loop's figure below: the stage's own pairs_per_second counts the rows
    # its batches hold over an epoch (batch_fill); the first steps' fill is set apart by stage_rows
    per_step = summary["pairs_per_second"] / summary["batch_fill"]
    return {"pairs_per_second": round(per_step, 2), "steps": summary["steps"],
            "device": summary["device"], "precision": summary["precision"],
            "steps_pairs_per_second": round(per_step * summary["train_minutes"] * 60 / steps_seconds, 2),
            "validation_share": summary["validation_minutes"] / summary["train_minutes"]}


def stage_rows(params: dict, rows: list[dict], steps: int) -> int:
    """The pairs the stage's first `steps` batches hold. Its batch sampler (pipeline.training.args batch_sampler, seeded
    as the trainer seeds it) lets no text repeat in a batch, so rows that share a text wait, and some batches are
    short (reports/train/metrics.json's batch_fill, over a whole epoch)."""
    from datasets import Dataset

    from pipeline.training.args import batch_sampler

    cfg, batch_size = params["train"], int(params["train"]["batch_size"])
    sampler = batch_sampler(cfg, rows)
    if not isinstance(sampler, functools.partial):  # sentence-transformers' NO_DUPLICATES: full batches
        return min(steps * batch_size, len(rows))
    dataset = Dataset.from_dict({c: [r[c] for r in rows] for c in rows[0] if c != "group"})
    batches = list(sampler(dataset, batch_size=batch_size, drop_last=False, seed=int(cfg["seed"])))
    epochs = (batches * (steps // len(batches) + 1))[:steps]  # a later epoch reshuffles; its sizes are alike
    return sum(len(b) for b in epochs)


def plain_pace(params: dict, rows: list[dict]) -> dict:
    """SentenceTransformerTrainer as its documentation shows it, on the stage's model, data, loss and settings."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from pipeline.models import load_model, pick_precision
    from pipeline.training.args import set_dropout
    from pipeline.training.losses import build_loss

    cfg = params["train"]
    torch.manual_seed(int(cfg["seed"]))
    model = load_model(params["model"]["base"], max_seq_length=int(cfg["max_seq_length"]))
    set_dropout(model, cfg["dropout"])
    # the library's loss as it comes: one padded forward pass a column (the stage's length_buckets split it)
    loss, dataset = build_loss(cfg["loss"], model, rows, dict(cfg, length_buckets=1))
    precision = pick_precision(cfg["precision"], "train.precision")
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=int(cfg["max_steps"]), per_device_train_batch_size=int(cfg["batch_size"]),
            learning_rate=float(cfg["learning_rate"]), warmup_steps=float(cfg["warmup_ratio"]),
            bf16=precision == "bf16", use_cpu=model.device.type == "cpu", save_strategy="no", eval_strategy="no",
            report_to="none", seed=int(cfg["seed"]), dataloader_num_workers=0, logging_steps=50)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    return {"pairs_per_second": round(steps * int(cfg["batch_size"]) / seconds, 2), "steps": steps,
            "device": model.device.type, "precision": precision}


def main() -> None:
    print(f"CPU: {cpu_model()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/prepared", help="a prepared folder (train.jsonl, val/, val_users/)")
    parser.add_argument("--rows", type=int, default=None, help="train on the first ROWS training rows")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each run")
    parser.add_argument("--evaluations", type=int, default=None,
                        help="the stage's validation checks (default: params.yaml train.evaluations)")
    parser.add_argument("--rounds", type=int, default=2, help="stage and plain runs each, alternating")
    args = parser.parse_args()
    data = prepared_data(args.data)
    if data is None:
        return
    overrides = {"train.max_steps": args.steps, "train.merge_alphas": [1.0]}
    if args.evaluations is not None:
        overrides["train.evaluations"] = args.evaluations
    work = workdir(ROOT / "bench" / "out" / "pace" / "stage", data, args.rows, overrides)
    params = yaml.safe_load((work / "params.yaml").read_text())
    rows = [json.loads(line) for line in (work / "data" / "prepared" / "train.jsonl").read_text().splitlines()]
    print(f"data: {data} ({len(rows)} training rows), {args.steps} steps of {params['train']['batch_size']} pairs, "
          f"{params['train']['evaluations']} validation checks in the stage", flush=True)
    held = stage_rows(params, rows, args.steps) / (args.steps * int(params["train"]["batch_size"]))
    print(f"the stage's first {args.steps} batches hold {held:.0%} of {args.steps} full batches' pairs", flush=True)
    paces: dict[str, list[float]] = {"stage": [], "stage_steps": [], "plain": [], "checks": []}
    for round_ in range(1, args.rounds + 1):
        for name, measure in (("stage", lambda: stage_pace(work)), ("plain", lambda: plain_pace(params, rows))):
            result = measure()
            paces[name].append(result["pairs_per_second"])
            steps_only = ""
            if name == "stage":
                paces["stage_steps"].append(result["steps_pairs_per_second"])
                paces["checks"].append(result["validation_share"])
                steps_only = (f"; {result['steps_pairs_per_second']:.2f} pairs/s in its steps, the validation checks "
                              f"{result['validation_share']:.0%} of its time")
            print(f"round {round_} {name:5}: {result['pairs_per_second']:.2f} pairs/s ({result['steps']} steps, "
                  f"{result['device']} {result['precision']}{steps_only})", flush=True)
    stage, plain = statistics.median(paces["stage"]), statistics.median(paces["plain"])
    steps, checks = statistics.median(paces["stage_steps"]), statistics.median(paces["checks"])
    print(f"\n| CPU | stage pairs/s (with its checks) | stage steps alone | plain loop | ratio with checks | "
          f"ratio of the steps | pairs in the stage's batches | ratio of pairs trained, steps alone (target >= 0.95) "
          f"| checks' share |\n|---|---|---|---|---|---|---|---|---|\n"
          f"| {cpu_model()} | {stage:.2f} | {steps:.2f} | {plain:.2f} | {stage / plain:.2f} | {steps / plain:.2f} "
          f"| {held:.0%} | {held * steps / plain:.2f} | {checks:.0%} |")
    print("The checks' share falls with the run's length: a full run's is reports/train/metrics.json's "
          "validation_minutes / train_minutes.")


if __name__ == "__main__":
    main()
