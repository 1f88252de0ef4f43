"""train: checkpoints that survive a kill, kept in a folder named by a hash of everything training depends on, so
that a re-run on the same inputs resumes from the last complete one and a run on changed inputs starts afresh.

A resumed run ends with the same weights as an uninterrupted one (tests/test_resume.py): the trainer's checkpoint
holds the optimizer, the scheduler, the RNG states and the trainer state (its log and the best validation so far);
the batches are rebuilt from (seed, epoch) and the trainer skips those already taken (pipeline/training/sampler.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from pipeline.models import model_fingerprint, resolve_model
from pipeline.training import distributed

log = logging.getLogger("pipeline.train")

# Beside the outputs, never one of them: DVC removes a stage's outs before it runs the stage (the checkpoints would
# go with them), and a persist out that a successful run removes would leave `dvc status` dirty. Git ignores it.
CHECKPOINTS = Path(".checkpoints/train")
CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # the trainer's name for the checkpoint of a step
# a checkpoint's optimizer and RNG states are only valid for the code that wrote them
LIBRARIES = ("torch", "transformers", "sentence-transformers", "accelerate")
TRAINER_STATE = "trainer_state.json"


def _digest_files(digest, files: dict[str, Path]) -> None:
    """Each file's name (as the key gives it) and content, in name order."""
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name].read_bytes()).digest())


def _files(paths: list[Path]) -> dict[str, Path]:
    """Every file of the paths (a file, or a folder's files), named by its path as given."""
    return {f.as_posix(): f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}


def inputs_key(settings: dict, base: str, data: list[Path]) -> str:
    """A hash of what decides each step of training: the settings (the train params, and what they resolved to on
    this machine: precision, processes, device), the base model's weights, the data files, the pipeline code this
    process runs (the modules dvc.yaml lists for the stage) and the versions of the training libraries."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(model_fingerprint(resolve_model(base)).encode())
    digest.update(json.dumps({name: metadata.version(name) for name in LIBRARIES}).encode())
    _digest_files(digest, _files([Path(p) for p in data]))
    # by the module's own name: the stage itself runs as __main__ under `python -m`, as pipeline.stages.train
    # when imported (torchrun, a script)
    named = {getattr(getattr(m, "__spec__", None), "name", None) or key: m for key, m in list(sys.modules.items())
             if key.split(".")[0] in ("pipeline", "__main__")}
    _digest_files(digest, {name: Path(m.__file__) for name, m in named.items()
                           if name.split(".")[0] == "pipeline" and getattr(m, "__file__", None)})
    return digest.hexdigest()[:16]


def step(checkpoint: Path) -> int:
    return int(CHECKPOINT.fullmatch(checkpoint.name).group(1))


def is_complete(checkpoint: Path, world: int) -> bool:
    """The trainer writes a checkpoint's trainer state last, after the weights, optimizer, scheduler and its own
    RNG state; under torchrun every process writes its RNG state, with no barrier before rank 0's trainer state."""
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not written yet, or cut short by the kill
        return False
    rng = ["rng_state.pth"] if world == 1 else [f"rng_state_{rank}.pth" for rank in range(world)]
    return all((checkpoint / name).is_file() for name in rng)


def checkpoint_folder(key: str, rank: int, world: int) -> tuple[Path, Path | None]:
    """This run's checkpoint folder, and the last complete checkpoint in it to resume from (None: from step 0).

    Rank 0 removes the folders of other inputs (they can never be resumed: a changed input starts afresh) and the
    checkpoints a kill cut short; every process is told the same answer."""
    folder = CHECKPOINTS / key
    choice = None
    if rank == 0:
        stale = sorted(p for p in CHECKPOINTS.iterdir() if p.name != key) if CHECKPOINTS.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        if stale:
            log.info("removed %s: checkpoints of other inputs (a param, a data file, the base model or the code "
                     "changed since), which this run cannot resume from", ", ".join(str(p) for p in stale))
        found = sorted((c for c in folder.glob("checkpoint-*") if CHECKPOINT.fullmatch(c.name)), key=step)
        for partial in [c for c in found if not is_complete(c, world)]:
            log.info("removed %s: a checkpoint the kill cut short", partial)
            shutil.rmtree(partial, ignore_errors=True)
        complete = [c for c in found if c.exists()]
        choice = str(complete[-1]) if complete else None
        if choice:
            log.info("resuming training from step %d (%s), left by a run on the same inputs", step(complete[-1]),
                     choice)
        else:
            log.info("training from step 0, checkpoints in %s", folder)
    choice = distributed.from_rank_0(choice, world)
    return folder, Path(choice) if choice else None


def remove(folder: Path) -> None:
    """After a successful run: its checkpoints, and the folders above them once empty (the model is the output)."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (CHECKPOINTS, CHECKPOINTS.parent):
        try:
            parent.rmdir()
        except OSError:  # not empty (another key is being written) or already gone
            break
