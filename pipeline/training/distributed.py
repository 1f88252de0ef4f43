"""train, as one of several processes under torchrun (one per GPU; gloo processes on a CPU): the process group, one
checkpoint folder for all, validation scores every process agrees on, and a barrier before rank 0 alone writes.

accelerate, inside the trainer, does the rest: it wraps the model in DDP and deals the batches out to the processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch

log = logging.getLogger("pipeline.train")


def relaunch_on_every_gpu() -> bool:
    """Several GPUs and not yet under torchrun: this stage again under torchrun, one process per GPU (the number of
    processes is the hardware's, never a param), exiting with its status. False: train in this process."""
    gpus = torch.cuda.device_count()
    if "WORLD_SIZE" in os.environ or gpus < 2:
        return False
    log.info("%d GPUs: training on all of them (torchrun --nproc_per_node %d)", gpus, gpus)
    status = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={gpus}", "-m", "pipeline.stages.train"]).returncode
    if status:  # non-zero when any process failed
        sys.exit(status)
    return True


def start() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is made here, and accelerate finds and uses it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        gpu = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else None
        if gpu:
            torch.cuda.set_device(gpu)
        # timeout: transformers' ddp_timeout, not NCCL's 10 minutes (rank 0 evaluates while the others wait)
        torch.distributed.init_process_group("nccl" if gpu else "gloo", device_id=gpu, timeout=timedelta(minutes=30))
        if rank:
            log.setLevel(logging.WARNING)  # rank 0 tells the story; the others only what goes wrong
    return rank, world


def from_rank_0(value, world: int):
    """Rank 0's value, on every process (what rank 0 alone decided or made)."""
    box = [value]
    if world > 1:
        torch.distributed.broadcast_object_list(box)
    return box[0]


def shared_tempdir(rank: int, world: int, prefix: str) -> Path:
    """One temporary folder for every process: rank 0 makes it, the others are told where it is."""
    return Path(from_rank_0(tempfile.mkdtemp(prefix=prefix) if rank == 0 else None, world))


def validate(evaluator, model) -> dict:
    """The evaluator's scores, the same on every process. Under DDP rank 0 runs it while the others encode their
    share of its texts, as the trainer evaluates during training; then rank 0 sends its scores to all."""
    from sentence_transformers.util.distributed import distributed_evaluation

    scores = [None]
    with distributed_evaluation(model) as here:
        if here:
            scores = [evaluator(model)]
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(scores)
    return scores[0]


def wait_for_all(world: int) -> None:
    """Every process got here: none died mid-way, so rank 0 may write."""
    if world > 1:
        torch.distributed.barrier()


def finish(world: int) -> None:
    if world > 1:
        torch.distributed.destroy_process_group()
