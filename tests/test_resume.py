"""train survives a kill: re-run on the same inputs, it resumes from the last checkpoint and ends with the very weights
(fp32, byte for byte) and logs of a run that was never killed; a changed input starts afresh.

The runs are the train stage itself, in project folders with the tiny model (conftest): 32 rows in batches of 8 over
3 epochs, 12 steps, a check and a checkpoint every 6 (mid-epoch). Dropout is on, so the restored RNG state counts
too. The kill is a real SIGKILL, sent by the process to itself from inside a training step (killed.py below):
nothing of the stage gets to clean up, and no code path of the stage knows about it. One thread a process: the
runs are small, and the machine's cores are shared.
"""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.models import model_fingerprint
from pipeline.params import load_params, set_params
from pipeline.paths import ROOT
from tests.conftest import run, train_stage_project

PARAMS = {"train.batch_size": 8, "train.epochs": 3, "train.max_steps": -1, "train.max_seq_length": 24,
          "train.evaluations": 2, "train.precision": "fp32", "train.dropout": 0.1, "train.group_batches": True,
          "train.loss": "MultipleNegativesRankingLoss", "train.learning_rate": 1e-3, "train.merge_alphas": [0.5, 1.0]}
# the stage, killed (SIGKILL, by itself) as it starts the training step after global step KILL_AT
KILLED = """import os, signal, sys
import sentence_transformers
from pipeline.params import run_main
from pipeline.stages import train
at, step = int(sys.argv[1]), sentence_transformers.SentenceTransformerTrainer.training_step
def killed(self, *args, **kwargs):
    if self.state.global_step == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
sentence_transformers.SentenceTransformerTrainer.training_step = killed
run_main(train.main)
"""


def project(folder: Path, tiny_model: str, **overrides) -> Path:
    params = set_params(load_params(path=ROOT / "params.yaml"), {"model.base": tiny_model, **PARAMS, **overrides})
    train_stage_project(folder, params)
    (folder / "killed.py").write_text(KILLED)
    return folder


def train(folder: Path, kill_at: int | None = None) -> str:
    """The train stage in the folder, to the end or killed; what it logged."""
    if kill_at is None:
        return run(["python", "-m", "pipeline.stages.train"], folder).stderr
    out = run(["python", "killed.py", str(kill_at)], folder, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    return out.stderr


def set_param(folder: Path, key: str, value) -> None:
    params = set_params(yaml.safe_load((folder / "params.yaml").read_text()), {key: value})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def checkpoints(folder: Path) -> dict[str, list[str]]:
    """Each key's checkpoints: {key: [checkpoint-N, ...]}."""
    root = folder / ".checkpoints/train"
    return {k.name: sorted(c.name for c in k.glob("checkpoint-*")) for k in root.iterdir()} if root.is_dir() else {}


def curves(folder: Path) -> dict[str, list]:
    """Every dvclive curve of the run: its (step, value) rows, wall-clock timestamps (if any) left out."""
    tables = sorted((folder / "reports/train/plots/metrics").rglob("*.tsv"))
    return {str(t.relative_to(folder)): pd.read_csv(t, sep="\t").drop(columns="timestamp", errors="ignore").values.tolist()
            for t in tables}


def test_a_killed_training_resumes_to_the_same_weights_and_a_changed_input_starts_afresh(tmp_path, tiny_model,
                                                                                           monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    whole = project(tmp_path / "whole", tiny_model)
    killed = project(tmp_path / "killed", tiny_model, **{"train.learning_rate": 5e-4})
    with ThreadPoolExecutor(1) as pool:  # the run never killed, beside the others
        uninterrupted = pool.submit(train, whole)
        # another input (the learning rate), killed at step 8: its checkpoint of step 6 stays
        train(killed, kill_at=8)
        (old_key, old), = checkpoints(killed).items()
        assert old == ["checkpoint-6"]
        # the inputs of `whole`: the other input's checkpoints cannot serve them, so training starts at step 0 and
        # removes them; killed again at step 8, after the checkpoint of step 6 (mid-way through the second epoch)
        set_param(killed, "train.learning_rate", PARAMS["train.learning_rate"])
        log = train(killed, kill_at=8)
        assert "training from step 0" in log and f"removed .checkpoints/train/{old_key}: checkpoints of other inputs" in log
        (key, kept), = checkpoints(killed).items()
        assert key != old_key and kept == ["checkpoint-6"]
        # re-run: resumes from step 6 (the trainer skips the batches of the epoch already taken), to the end
        log = train(killed)
        assert "resuming training from step 6" in log and "training from step 0" not in log
        assert not (killed / ".checkpoints").exists()  # a run that succeeded leaves no checkpoints behind
        uninterrupted.result()
    assert "training from step 0" in uninterrupted.result() and not (whole / ".checkpoints").exists()

    # the same weights, byte for byte (fp32), the same checkpoint kept and merge weight; and the same curves, which
    # hold every step's loss and gradient norm exactly: the same path to the end, whichever checkpoint validation
    # kept (the tiny model is drawn anew each session, and it may keep the one of step 6, from before the kill)
    assert model_fingerprint(killed / "models/finetuned") == model_fingerprint(whole / "models/finetuned")
    summary = [json.loads((f / "reports/train/metrics.json").read_text()) for f in (whole, killed)]
    for s in summary:
        del s["train_minutes"], s["validation_minutes"], s["pairs_per_second"]
    assert summary[0] == summary[1] and summary[0]["steps"] == 12
    assert curves(killed) == curves(whole)
    checks = curves(whole)["reports/train/plots/metrics/eval/sequential_score.tsv"]
    assert [step for step, _ in checks] == [0, 6, 12]  # each check once: the resumed run did not check step 6 again
    assert [step for step, _ in curves(whole)["reports/train/plots/metrics/loss.tsv"]] == list(range(1, 13))


@pytest.mark.parametrize("complete", [True, False])
def test_a_checkpoint_cut_short_by_the_kill_is_not_resumed_from(tmp_path, monkeypatch, complete):
    """The trainer writes a checkpoint's trainer_state.json last: without it (or cut short) the checkpoint is
    incomplete, removed, and the run resumes from the one before."""
    from pipeline.training import resume

    monkeypatch.chdir(tmp_path)
    folder = resume.CHECKPOINTS / "abc"
    for step in (4, 8):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}/rng_state.pth").write_bytes(b"rng")
    (folder / "checkpoint-4/trainer_state.json").write_text('{"global_step": 4}')
    (folder / "checkpoint-8/trainer_state.json").write_text('{"global_step": 8}' if complete else '{"global_st')
    (resume.CHECKPOINTS / "stale").mkdir()
    found, last = resume.checkpoint_folder("abc", rank=0, world=1)
    assert found == folder and last == folder / ("checkpoint-8" if complete else "checkpoint-4")
    assert sorted(p.name for p in folder.iterdir()) == (["checkpoint-4", "checkpoint-8"] if complete
                                                         else ["checkpoint-4"])
    assert [p.name for p in resume.CHECKPOINTS.iterdir()] == ["abc"]  # the other inputs' folder is gone
    # under torchrun every process's RNG state must be there too
    assert not resume.is_complete(folder / "checkpoint-4", world=2)
    resume.remove(folder)
    assert not Path(".checkpoints").exists()


def test_the_key_changes_with_every_input(tmp_path, monkeypatch, tiny_model):
    """Params, data and the base model each change the key; the same inputs give the same key."""
    from pipeline.training import resume

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    (data / "train.jsonl").write_text('{"anchor": "a", "positive": "b"}\n')
    (data / "val/queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    settings = {"train": {"learning_rate": 5e-5, "seed": 42}, "precision": "fp32", "processes": 1}
    files = [Path("data/train.jsonl"), Path("data/val")]
    key = resume.inputs_key(settings, tiny_model, files)
    assert resume.inputs_key(settings, tiny_model, files) == key
    assert resume.inputs_key({**settings, "train": {"learning_rate": 1e-4, "seed": 42}}, tiny_model, files) != key
    assert resume.inputs_key({**settings, "processes": 2}, tiny_model, files) != key
    (data / "val/queries.jsonl").write_text('{"_id": "q1", "text": "an edited question"}\n')
    assert resume.inputs_key(settings, tiny_model, files) != key
    (data / "val/queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    assert resume.inputs_key(settings, tiny_model, files) == key
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    assert resume.inputs_key(settings, str(other), files) == key  # the weights count, not where they lie
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")
    assert resume.inputs_key(settings, str(other), files) != key


@pytest.mark.parametrize("eval_steps", [1, 4, 6, 9, 13, 250, 301, 1000])
def test_every_checkpoint_falls_on_a_logging_step(eval_steps):
    """A checkpoint keeps no loss summed since the last log: one saved between two logs would make the resumed run
    log a different mean loss. The loss is logged about 4 times a check, at most every 50 steps, at a divisor of
    the check interval (a checkpoint is saved at each check)."""
    from pipeline.training.args import logging_steps

    every = logging_steps(eval_steps)
    assert eval_steps % every == 0 and 1 <= every <= max(1, min(50, eval_steps // 4))
    assert every == {1: 1, 4: 1, 6: 1, 9: 1, 13: 1, 250: 50, 301: 43, 1000: 50}[eval_steps]
