"""A content-addressed cache of embeddings, so that one `dvc repro` encodes each passage once per model: baselines
and index_base share the base model's vectors, evaluate and index the fine-tuned model's.

An entry is one .npy file (float32, one row per text) in .cache/embeddings/ (pipeline/paths.py EMBEDDINGS), named
by a hash of everything the vectors depend on: the model (its weights, modules, pooling and tokenizer: a fingerprint
taken once per loaded model), the texts in order, max_seq_length, precision, batch size (sentence-transformers sorts
a call's texts by length and pads each batch to its longest, so batch composition changes the numbers), the device,
CPU model, thread count and library versions (they change the floating-point sums). A hit is therefore exactly what
a fresh encode here would give, bit for bit; a changed passage or model is another key, a miss, and is encoded.

DVC stays honest without knowing of the cache: it is neither a dependency nor an output of any stage. A stage's
result is a function of its deps alone, the cache only saves recomputing a part of it (as ccache does for a
compiler); deleting .cache/ at any time changes no result, only the time. It is git- and DVC-ignored.

Stages opt in (encode_cached, or dense_run(..., encoder=encode_cached)); the serving library never writes to disk,
and a model changed in memory after its first cached encode (training) must not use it: its fingerprint is kept.
Entries are written to a temporary name and renamed into place, so a reader never finds half a file, and the least
recently used are dropped when the folder grows past MAX_BYTES.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.params import repo_path
from pipeline.paths import EMBEDDINGS
from pipeline.retrieval import encode

log = logging.getLogger("pipeline.embeddings")

# 384-dimensional float32 vectors take 1.5 KB a text: 4 GiB holds both models' vectors (base and fine-tuned) of
# 1.3 million passages, or of MedQuAD's 5,000 (15 MB) for hundreds of training runs
MAX_BYTES = 4 << 30
LIBRARIES = ("torch", "transformers", "sentence-transformers")


def encode_cached(model, texts: list[str], batch_size: int, precision: str = "fp32", folder: str | Path = EMBEDDINGS):
    """pipeline.retrieval.encode, through the cache: the same float32 tensor on the model's device."""
    import torch

    texts = list(texts)
    fingerprint = model_fingerprint(model)
    path = repo_path(folder) / f"{fingerprint[:16]}-{entry_key(model, texts, batch_size, precision)}.npy"
    folder_parts = Path(str(getattr(model.tokenizer, "name_or_path", "") or "model")).parts[-2:]
    label = f"{'/'.join(folder_parts)} ({fingerprint[:12]})"  # e.g. models/finetuned (3fa2c1d9e0ab)
    vectors = load_entry(path, len(texts))
    if vectors is not None:
        with contextlib.suppress(OSError):  # dropped meanwhile by another stage: the vectors are in hand
            os.utime(path)  # used now: the last to be dropped
        log.info("encoded %d texts with %s from the cache", len(texts), label)
        return torch.from_numpy(vectors).to(model.device)
    tensor = encode(model, texts, batch_size, precision)
    store_entry(path, tensor.cpu().numpy())
    log.info("encoded %d texts with %s (cache miss)", len(texts), label)
    return tensor


def model_fingerprint(model) -> str:
    """sha256 of what makes a model's vectors: its modules as configured (architecture, pooling, normalisation), its
    tokenizer and every weight. Hashed once per loaded model (0.3 s for MiniLM's 90 MB) and kept on it."""
    known = getattr(model, "_pipeline_fingerprint", None)
    if known:
        return known
    import torch

    digest = hashlib.sha256(repr(model).encode())
    tokenizer = model.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its definition as JSON, less the truncation and padding each encode
        definition = json.loads(backend.to_str())  # call sets (the length is part of the entry's key)
        digest.update(json.dumps({k: v for k, v in definition.items() if k not in ("truncation", "padding")},
                                 sort_keys=True).encode())
    else:
        digest.update(repr(tokenizer).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    model._pipeline_fingerprint = digest.hexdigest()
    return model._pipeline_fingerprint


def entry_key(model, texts: list[str], batch_size: int, precision: str) -> str:
    """sha256 of the texts in order and every setting that changes the numbers (module docstring)."""
    import torch

    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: ["ab", "c"] is not ["a", "bc"]
    settings = {"model": model_fingerprint(model), "texts": digest.hexdigest(), "max_seq_length": model.max_seq_length,
                "precision": precision, "batch_size": batch_size, "device": host(model.device),
                "threads": torch.get_num_threads(), "versions": {name: metadata.version(name) for name in LIBRARIES}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:40]


def host(device) -> str:
    """The hardware the numbers come from: the GPU's name and count, or the CPU model."""
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_entry(path: Path, rows: int) -> np.ndarray | None:
    """The cached vectors, or None: no entry, or one that cannot be read (a disk error), which is encoded again."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("unreadable embedding cache entry %s (%s): encoding again", path, e)
        return None
    return vectors if vectors.shape[0] == rows and vectors.dtype == np.float32 else None


def store_entry(path: Path, vectors: np.ndarray) -> None:
    """Write an entry under a temporary name and rename it into place, then drop the least recently used entries
    past MAX_BYTES (never the one just written). A full disk costs the cache, never the stage."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, vectors, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        evict(path.parent, keep=path)
    except OSError as e:
        log.warning("could not write the embedding cache entry %s (%s): going on without it", path, e)


def evict(folder: Path, keep: Path, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Remove the least recently used entries (by modification time: a hit touches it) until the folder holds at most
    max_bytes; `keep` stays whatever its size. Returns what was removed."""
    entries = []
    for f in folder.glob("*.npy"):
        try:
            stat = f.stat()
        except FileNotFoundError:  # removed meanwhile by another stage's eviction
            continue
        entries.append((stat.st_mtime, stat.st_size, f))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, f in sorted(entries):
        if total <= max_bytes:
            break
        if f == keep:
            continue
        f.unlink(missing_ok=True)
        total -= size
        removed.append(f)
    return removed
