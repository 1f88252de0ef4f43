"""Outputs written atomically (a failed stage leaves the previous ones), and small JSON/JSONL helpers.

An output is made in a private staging folder beside it (`.<name>.XXXXXXXX`, the same file system, so a rename moves
it) and swapped in by renames once the whole block succeeded: the previous output is set aside into the staging
folder, the new one renamed in, and the staging folder (with the previous output) removed last. A file replacing a
file is one atomic rename (the previous one is kept by a hard link), so a reader never finds it missing. Never
deleting before the new output is in place means a failure at any step leaves the previous one: in place, or put
back, or (a process killed between the two renames of a directory) in `.<name>.XXXXXXXX/<name>.old`.
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
def atomic_outputs(*targets: str | Path):
    """Yield one path per target, where the block makes that output: a file or a directory.

    The block makes each with a plain open or mkdir, so it gets the modes the umask gives (mkdtemp's 0o700 and
    mkstemp's 0o600 stay on the staging folders, never on an output). Nothing is put in place before the whole block
    succeeded; then every output is swapped in, renames only, back to back. An error in the block or in a rename
    leaves every previous output, so several outputs of one stage are never a mix of two runs.
    """
    paths = [repo_path(t) for t in targets]
    if len(set(paths)) != len(paths):
        raise ValueError(f"an output named twice: {', '.join(map(str, targets))}")
    staging: list[Path] = []
    kept: set[Path] = set()  # staging folders still holding a previous output a rollback could not put back
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging.append(Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)))
        yield tuple(folder / path.name for folder, path in zip(staging, paths))
        missing = [str(p) for folder, p in zip(staging, paths) if not os.path.lexists(folder / p.name)]
        if missing:  # checked before any rename: a half set of new outputs is never swapped in
            raise FileNotFoundError(f"the stage made no {', '.join(missing)}")
        for folder, p in zip(staging, paths):
            _umask_modes(folder / p.name)
        _swap_all([(folder / p.name, p, folder / f"{p.name}.old") for folder, p in zip(staging, paths)], kept)
    finally:
        for folder in staging:
            if folder not in kept:
                shutil.rmtree(folder, ignore_errors=True)  # unlinks links inside, never follows them


def _umask_modes(output: Path) -> None:
    """The modes a plain mkdir or open gives, on everything the block made: a library that writes through a
    temporary file and a rename (transformers' model.safetensors) leaves it 0o600, unreadable to a service running
    as another user. Execute bits are kept on files that have them."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [output, *(output.rglob("*") if _is_dir(output) else [])]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        else:
            path.chmod((0o777 if path.stat().st_mode & 0o111 else 0o666) & ~mask)


def _swap_all(swaps: list[tuple[Path, Path, Path]], kept: set[Path]) -> None:
    """Swap each (new, target, aside) in; if one fails, put back it and those before it, last first, and raise. A
    staging folder whose previous output could not be put back goes into `kept`, so that it is not removed."""
    for i, swap in enumerate(swaps):
        try:
            _swap(*swap)
        except BaseException as error:
            for new, target, aside in reversed(swaps[:i + 1]):
                try:
                    _put_back(new, target, aside)
                except OSError as undo:
                    kept.add(aside.parent)
                    error.add_note(f"could not put back the previous {target} ({undo}): it is in {aside}")
            raise


def _swap(new: Path, target: Path, aside: Path) -> None:
    """Put `new` at `target`, keeping the previous output (if any) at `aside`."""
    if os.path.lexists(target):
        if not _is_dir(target) and not _is_dir(new):
            # a file over a file: one atomic rename, so a reader never finds it missing; the hard link keeps the
            # previous one for a rollback
            try:
                os.link(target, aside, follow_symlinks=False)
            except OSError:  # a file system without hard links: set aside by a rename, as a directory is
                os.replace(target, aside)
        else:
            os.replace(target, aside)  # a link (DVC's cache) moves as the link: what it points to is left alone
    os.replace(new, target)


def _put_back(new: Path, target: Path, aside: Path) -> None:
    """Undo a swap wherever it stopped: the new output back to its staging path, the previous one to its place."""
    if not os.path.lexists(new):  # the new output had been renamed in
        os.replace(target, new)
    if os.path.lexists(aside) and not os.path.lexists(target):
        os.replace(aside, target)


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield an empty directory that replaces `target` only when the block succeeds (see atomic_outputs)."""
    with atomic_outputs(target) as (tmp,):
        tmp.mkdir()
        yield tmp


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield an empty file that replaces `target` only when the block succeeds (see atomic_outputs)."""
    with atomic_outputs(target) as (tmp,):
        tmp.touch(exist_ok=False)
        yield tmp


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return pd.read_json(path, lines=True, dtype=False).to_dict("records")
