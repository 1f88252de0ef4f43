"""Outputs written atomically (a failed stage leaves the previous ones), and small JSON/JSONL helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from pipeline.params import repo_path


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary directory beside `target`; on success it replaces `target`, on error it is removed.

    So a failed stage never leaves a half-written output where DVC (or a user) would take it for a result.
    """
    target = repo_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield a temporary path beside `target`, renamed onto it only when the block succeeds."""
    target = repo_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return pd.read_json(path, lines=True, dtype=False).to_dict("records")
