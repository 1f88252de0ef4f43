"""Benchmark: the train stage on 1 process and on N (torchrun) at the same global batch and the same steps.

    python bench/scale_train.py                         # the bundled data (data/prepared: `dvc repro -s prepare`)
    python bench/scale_train.py --data bench/out/final/data/prepared --rows 4000     # MedQuAD, once run_medquad.py
                                                        # has prepared it from ../shared/bench
    python bench/scale_train.py --processes 4 --batch 256 --steps 100                # e.g. on a 4-GPU machine

Each run trains in its own folder under bench/out/scale/ (git-ignored) on a copy of the prepared data (the first
--rows training rows; the validation sets whole), with the project's params.yaml except: batch --batch / processes
per process, --steps optimizer steps, one validation check and no merge (the final score is the trained model's).
It prints each run's wall time (the whole process: start-up, the validation checks, training), the training time
and pairs/s from reports/train/metrics.json, and the final validation NDCG@10. On a CPU-only machine the N processes
use gloo and share its cores (torchrun gives each one thread); on a GPU machine each takes a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from pipeline.params import set_params  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def prepared_data(folder: str) -> Path | None:
    """A prepared folder (train.jsonl, val/, val_users/), or None with a word on how to make one (also used by
    bench/train_pace.py)."""
    data = (ROOT / folder).resolve()
    if not (data / "train.jsonl").is_file():
        print(f"no prepared data at {data}: run `dvc repro -s prepare` (bundled data) or `python bench/run_medquad.py`"
              " (MedQuAD, needs ../shared/bench); nothing measured")
        return None
    return data


def workdir(work: Path, data: Path, rows: int | None, overrides: dict) -> Path:
    """The train stage's folder: the first `rows` training rows of a prepared `data`, the validation sets whole,
    the project's params with `overrides` (also used by bench/train_pace.py)."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "data" / "prepared").mkdir(parents=True)
    for folder in ("val", "val_users"):
        shutil.copytree(data / folder, work / "data" / "prepared" / folder)
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "data" / "prepared" / "train.jsonl").write_text("".join(lines[:rows]), encoding="utf-8")
    params = set_params(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def train(work: Path, processes: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pipeline.stages.train"]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    else:
        import torch

        if torch.cuda.device_count() > 1:
            env["CUDA_VISIBLE_DEVICES"] = "0"  # one process on one GPU, not re-launched on all of them
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{processes} process(es) failed; see {work / 'train.log'}\n{proc.stderr[-3000:]}")
    return {"wall": wall, **json.loads((work / "reports" / "train" / "metrics.json").read_text())}


def main() -> None:
    print(f"CPU: {cpu_model()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/prepared", help="a prepared folder (train.jsonl, val/, val_users/)")
    parser.add_argument("--rows", type=int, default=None, help="train on the first ROWS training rows")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="global batch: pairs per optimizer step, all processes")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    data = prepared_data(args.data)
    if data is None:
        return
    if args.batch % args.processes:
        sys.exit(f"--batch {args.batch} does not split evenly over {args.processes} processes")
    print(f"data: {data} ({args.rows or 'all'} training rows), {args.steps} steps of {args.batch} pairs", flush=True)
    results = {}
    for processes in (1, args.processes):
        work = workdir(ROOT / "bench" / "out" / "scale" / f"{processes}proc", data, args.rows, {
            "train.max_steps": args.steps, "train.batch_size": args.batch // processes,
            "train.evaluations": 1, "train.merge_alphas": [1.0]})
        results[processes] = r = train(work, processes)
        print(f"{processes} process(es) done: {r['wall']:.0f} s", flush=True)

    print("\n| processes | device | batch per process | steps | wall time (s) | training (s) | pairs/s "
          "| val NDCG@10 | val_users NDCG@10 |\n|---|---|---|---|---|---|---|---|---|")
    for processes, r in results.items():
        print(f"| {processes} | {r['device']} {r['precision']} | {args.batch // processes} | {r['steps']} "
              f"| {r['wall']:.0f} | {r['train_minutes'] * 60:.0f} | {r['pairs_per_second']:.1f} "
              f"| {r['val_ndcg@10_best']:.4f} | {r['val_users_ndcg@10_best']:.4f} |")


if __name__ == "__main__":
    main()
