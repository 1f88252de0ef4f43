"""train on several processes (torchrun; gloo on the CPU here, NCCL on GPUs): the processes share out the batches,
the loss gathers them into one softmax, and rank 0 alone writes the model and the logs.

The end-to-end runs use the tiny model (conftest), 32 rows and 4 steps: under a minute in all on 2 cores.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.params import load_params, set_params
from pipeline.paths import ROOT
from tests.conftest import PET_ROWS, PET_TOPICS, run, train_stage_project

# 8 topics of 4 rows, every text distinct: with batches of 4 each batch is one whole topic, none waits (no clash),
# so the grouped sampler's row stream does not depend on the batch size. The first global batch of 2 processes x 4
# (batches 0 and 1 of the stream, one per rank) is then exactly the first batch of 8 of a single process, and so is
# every later one: the two runs see the same pairs at every step.
TOPICS, ROWS = PET_TOPICS, PET_ROWS
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def project(folder: Path, tiny_model: str, batch_size: int) -> Path:
    """A project folder as the train stage sees it: params.yaml (the tiny model, 1 epoch, fp32) and data/prepared/."""
    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "train.batch_size": batch_size, "train.epochs": 1, "train.max_steps": -1,
        "train.max_seq_length": 24, "train.evaluations": 2, "train.precision": "fp32", "train.dropout": 0.0,
        "train.group_batches": True, "train.loss": "MultipleNegativesRankingLoss"})
    return train_stage_project(folder, params)


def train(folder: Path, torchrun: bool, check: bool = True, script: str | None = None) -> subprocess.CompletedProcess:
    """python -m pipeline.stages.train in the folder: alone, or under torchrun on 2 processes (or `script` under torchrun),
    each process's output in its own files under folder.parent / "logs"."""
    module = [script] if script else ["-m", "pipeline.stages.train"]
    torchrun = [*TORCHRUN, f"--log-dir={folder.parent / 'logs'}", "--redirects=3"] if torchrun else [sys.executable]
    return run([*torchrun, *module], folder, check=check)


def rank_output(folder: Path, rank: int) -> str:
    """What one process of a torchrun in `folder` printed (torchrun --log-dir: <run>/attempt_0/<rank>/std*.log)."""
    files = sorted((folder.parent / "logs").glob(f"*/attempt_0/{rank}/std*.log"))
    assert len(files) == 2, files
    return "".join(f.read_text() for f in files)


def curve(folder: Path, name: str) -> pd.Series:
    """One dvclive curve of a run, by step."""
    table = pd.read_csv(folder / f"reports/train/plots/metrics/{name}.tsv", sep="\t")
    return table.set_index("step")[name.split("/")[-1]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """The same training twice: 2 processes x batch 4 (torchrun, gloo), and 1 process x batch 8."""
    two = project(tmp_path_factory.mktemp("two") / "project", tiny_model, 4)
    one = project(tmp_path_factory.mktemp("one") / "project", tiny_model, 8)
    return SimpleNamespace(two=two, one=one, out=train(two, torchrun=True), single=train(one, torchrun=False))


def test_two_processes_train_like_one_with_their_batches_together(runs):
    """The loss gathers both processes' batches (gather_across_devices): every step's loss, as logged (the mean over
    the processes), and the gradient norm equal a single process's on the same pairs in one batch of 8."""
    assert json.loads((runs.two / "reports/train/metrics.json").read_text())["processes"] == 2
    for name in ("loss", "grad_norm"):
        two, one = curve(runs.two, name), curve(runs.one, name)
        assert list(two.index) == list(one.index) == [1, 2, 3, 4]  # 32 rows / (2 x 4): 4 steps each, not 8
        assert two.to_numpy() == pytest.approx(one.to_numpy(), abs=1e-4), name
    # checks spread over the 4 steps each process takes (train.evaluations 2): steps 0, 2 and 4, on both runs
    for folder in (runs.two, runs.one):
        assert list(curve(folder, "eval/val_cosine_ndcg@10").index) == [0, 2, 4]


def test_rank_0_alone_writes_and_every_rank_loads_the_best_checkpoint(runs):
    first, second = rank_output(runs.two, 0), rank_output(runs.two, 1)
    assert "2 processes, batch 4 each: 8 pairs a step, 4 steps an epoch" in first
    assert len(re.findall(r"wrote models/finetuned and reports/train", first)) == 1
    assert "pipeline INFO done in" in second and "wrote" not in second  # rank 1 got to the end, and wrote nothing
    # one checkpoint folder for both: each process found the best checkpoint rank 0 saved
    assert "Could not load the best model" not in first + second
    # nothing but the outputs: no second writer's temporaries
    assert [p.name for p in (runs.two / "models").iterdir()] == ["finetuned"]
    assert [p.name for p in (runs.two / "reports").iterdir()] == ["train"]


def test_the_saved_model_loads_and_encodes(runs):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(runs.two / "models/finetuned"), device="cpu")
    embeddings = model.encode(["my cat drinks a lot", "kidney disease in cats"])
    assert embeddings.shape == (2, 32) and abs(embeddings).sum() > 0


def test_a_process_that_dies_mid_training_leaves_the_previous_model(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the checkpoints a failed run leaves behind
    folder = project(tmp_path / "project", tiny_model, 4)
    for out in ("models/finetuned", "reports/train"):
        (folder / out).mkdir(parents=True)
        (folder / out / "previous").write_text("the previous run's")
    script = folder / "dies.py"  # rank 1 is killed at its second step
    script.write_text(
        "import os\nimport sentence_transformers\nfrom pipeline.stages import train\nfrom pipeline.params import run_main\n"
        "step = sentence_transformers.SentenceTransformerTrainer.training_step\n"
        "def dies(self, *args, **kwargs):\n"
        "    if os.environ['RANK'] == '1' and self.state.global_step == 1:\n        os._exit(9)\n"
        "    return step(self, *args, **kwargs)\n"
        "sentence_transformers.SentenceTransformerTrainer.training_step = dies\nrun_main(train.main)\n")
    out = train(folder, torchrun=True, check=False, script=str(script))
    assert out.returncode != 0
    for name in ("models", "reports"):
        listing = {str(p.relative_to(folder / name)) for p in (folder / name).rglob("*")}
        assert listing == {"finetuned" if name == "models" else "train",
                           ("finetuned" if name == "models" else "train") + "/previous"}, listing


def grouped_sampler(rows, batch_size, drop_last=True, processes=2, seed=42):
    from datasets import Dataset

    from pipeline.training.sampler import GroupedNoDuplicatesBatchSampler

    data = Dataset.from_dict({c: [r[c] for r in rows] for c in ("anchor", "positive")})
    return GroupedNoDuplicatesBatchSampler(data, batch_size=batch_size, drop_last=drop_last, seed=seed,
                                           groups=[r["group"] for r in rows], processes=processes)


def dealt(sampler, world: int, epoch: int = 0) -> list[list[list[int]]]:
    """Each rank's batches, dealt as the trainer deals them: accelerate's BatchSamplerShard, even_batches off (as
    sentence-transformers sets it for training), over the sampler every process builds the same."""
    from accelerate.data_loader import BatchSamplerShard

    sampler.set_epoch(epoch)
    shards = [BatchSamplerShard(sampler, num_processes=world, process_index=rank, even_batches=False)
              for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # the trainer's steps per epoch: the same on every rank
    batches = [list(s) for s in shards]
    assert all(len(b) == len(s) for b, s in zip(batches, shards))  # len() is what each rank really takes
    return batches


def test_every_row_once_per_epoch_across_the_processes():
    sampler = grouped_sampler(ROWS, 4)
    for epoch in (0, 1):
        ranks = dealt(sampler, 2, epoch)
        seen = [[i for b in rank for i in b] for rank in ranks]
        assert sorted(seen[0] + seen[1]) == list(range(len(ROWS)))  # all 32 rows, none twice, none on both ranks
        assert len(ranks[0]) == len(ranks[1]) == 4 and all(len(b) == 4 for r in ranks for b in r)
        assert all(len({ROWS[i]["group"] for i in b}) == 1 for r in ranks for b in r)  # whole topics still
        # round-robin over the one stream: rank 0 gets batches 0, 2, 4, 6 of it, rank 1 batches 1, 3, 5, 7
        assert [b for pair in zip(*ranks) for b in pair] == list(sampler)
    assert dealt(sampler, 2, 0) != dealt(sampler, 2, 1)  # reshuffled each epoch, on every rank alike


@pytest.mark.parametrize("world", [2, 3])
def test_no_text_twice_in_one_optimizer_step_across_the_processes(world):
    """The loss gathers every rank's batch of a step into one softmax: a text in two ranks' batches of the same
    step would be its own negative. Topics whose questions share one answer (as FAQ rows with one answer and
    several phrasings do) make rows wait; the row that waits must go to a later step, not to the next rank's
    batch of this one (which a per-process no-duplicate rule allowed: 0-2 repeats per epoch, seeds 0-4)."""
    rows = [{"anchor": f"question {i} on {t}", "positive": f"the one answer on {t}" if i < 3 else f"answer {i} on {t}",
             "group": t} for t in TOPICS for i in range(5)]
    for seed in range(5):
        sampler = grouped_sampler(rows, 4, processes=world, seed=seed)
        for epoch in (0, 1):
            ranks = dealt(sampler, world, epoch)
            for step in zip(*ranks):
                texts = [text for batch in step for i in batch for text in (rows[i]["anchor"], rows[i]["positive"])]
                assert len(texts) == len(set(texts)), (seed, epoch, step)


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_batches_give_every_process_the_same_steps(world):
    """9 topics, one of them with a passage shared by all its rows (they wait for later batches, and the last ones
    may be short): every rank still takes the same number of full batches (a rank with one step more would wait for
    the others forever), none overlapping, and train.py counts exactly those steps."""
    rows = ROWS + [{"anchor": f"question {i} on fleas", "positive": "one shared answer on fleas", "group": "fleas"}
                   for i in range(4)]
    sampler = grouped_sampler(rows, 4, processes=world)
    ranks = dealt(sampler, world)
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) and all(len(b) == 4 for r in ranks for b in r)
    assert len(ranks[0]) == len(sampler) // world  # train.py: len(sampler with drop_last) // world
    assert len(seen) >= len(rows) - 4 - world * 4  # left out: the clashing rows, and at most a round of batches


def test_several_gpus_relaunch_the_stage_under_torchrun(monkeypatch):
    """`python -m pipeline.stages.train` (dvc repro) on a machine with 4 GPUs: torchrun, one process per GPU, and its exit
    status is the stage's."""
    import torch

    from pipeline.stages import train

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or SimpleNamespace(returncode=3))
    with pytest.raises(SystemExit) as failed:
        train.main()
    assert failed.value.code == 3
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                      "-m", "pipeline.stages.train"]]


def test_device_per_process_and_a_clear_cpu_fallback(monkeypatch, caplog):
    import torch

    from pipeline.models import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device() == "cuda:1"  # under torchrun: this process's own GPU
    monkeypatch.delenv("LOCAL_RANK")
    assert pick_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert pick_device() == "cpu"
    assert "CUDA_VISIBLE_DEVICES=0 asks for a GPU" in caplog.text and "falling back to the CPU" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU asked for: no warning
    assert pick_device() == "cpu" and not caplog.text
