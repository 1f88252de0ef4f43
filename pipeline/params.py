"""Parameters and the command-line wrapper: params.yaml, InputError (bad input, exit 1), the rule that every
file a stage reads through params is one of its DVC dependencies.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import yaml

log = logging.getLogger("pipeline")


class InputError(Exception):
    """Bad user input: the message names the file, line and field. Stages exit 1 with it, no traceback."""


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # transformers and datasets are chatty at INFO; keep their warnings.
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_params(section: str | None = None, path: str | Path = "params.yaml") -> dict:
    """The whole params.yaml, or one section of it (a stage reads only its own sections)."""
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    return params if section is None else params[section]


def set_params(params: dict, overrides: dict) -> dict:
    """Apply {"train.epochs": 2, ...} overrides in place, as `dvc exp run -S` does (used by bench/ and tests/)."""
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return params


def repo_path(p: str | Path) -> Path:
    """Paths in params may be absolute or relative to the repository root (where dvc runs the stages)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def run_main(main) -> None:
    """Entry point wrapper: timing log, and a one-line error with exit status 1 for bad input."""
    setup_logging()
    start = time.perf_counter()
    try:
        main()
    except InputError as e:
        log.error("%s", e)
        sys.exit(1)
    log.info("done in %.1f s", time.perf_counter() - start)


def require_tracked(stage: str, paths: dict) -> None:
    """Every file or folder a stage reads through params must be a dependency of that stage in dvc.yaml (the path
    itself or a folder holding it). Otherwise DVC does not see it change: after an edit `dvc repro` would re-run
    nothing and keep serving results made from the old content. `paths` maps a params key to a path, a list of
    paths, a {name: path} mapping or None. Outside a DVC project (a library call) there is nothing to keep in step.
    """
    dvc_file = Path("dvc.yaml")
    if not dvc_file.is_file():
        return
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    listed = [next(iter(d)) if isinstance(d, dict) else str(d) for d in (stages.get(stage) or {}).get("deps", [])]
    deps = [repo_path(d).resolve() for d in listed]
    for key, value in paths.items():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for p in (str(v) for v in values if v):
            path = repo_path(p).resolve()
            if not any(path == d or d in path.parents for d in deps):
                raise InputError(
                    f"params.yaml: {key} {p} is not a dependency of stage '{stage}' in dvc.yaml, so DVC would not "
                    f"re-run the stage when it changes: add '- {p}' under stages.{stage}.deps (its deps now: "
                    f"{', '.join(listed)})")
