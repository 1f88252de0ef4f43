"""Parameters and the command-line wrapper: params.yaml checked against its schema (pipeline/schema.py) before a
stage uses it, InputError (bad input, exit 1), the rule that every file a stage reads through params is one of its
DVC dependencies.
"""

from __future__ import annotations

import difflib
import logging
import sys
import time
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.schema import Params, must_exist

log = logging.getLogger("pipeline")


class InputError(Exception):
    """Bad user input: the message names the file, line and field. Stages exit 1 with it, no traceback."""


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # transformers and datasets are chatty at INFO; keep their warnings.
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_params(section: str | None = None, path: str | Path = "params.yaml") -> dict:
    """One section of params.yaml, checked against the schema with the data files it names (a stage reads only its
    own sections, each checked before it does any work), or the whole file with its keys and types checked (a tool
    reading it to edit it: files are not looked at). As written: the stages read plain dicts. A problem is an
    InputError naming the key path and line; `python -m pipeline.check` lists every problem of the file."""
    text = Path(path).read_text(encoding="utf-8")
    params = parse_params(text, str(path))
    found = problems(params, [section] if section else None, Path(path).resolve().parent if section else None, text,
                     str(path))
    if section and not found and section not in params:
        found = [f"{path}: no {section} section"]
    if found:
        more = f" (and {len(found) - 1} more: python -m pipeline.check lists them)" if len(found) > 1 else ""
        raise InputError(found[0] + more)
    return params if section is None else params[section]


def parse_params(text: str, name: str = "params.yaml"):
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{name}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None


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
                    f"re-run the stage when it changes: run `python -m pipeline.track {p}`, or add '- {p}' under "
                    f"stages.{stage}.deps (its deps now: {', '.join(listed)})")


def model_of(annotation) -> type[BaseModel] | None:
    """The section model a field holds (through `X | None`), or None for a plain value."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def model_at(loc: tuple) -> type[BaseModel] | None:
    model = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = model_of(field.annotation) if field else None
        if model is None:
            return None
    return model


def is_path(field) -> bool:
    """Whether a field holds data paths (DataPath, alone, in a list or as a mapping's values)."""
    def walk(t) -> bool:
        return any(getattr(m, "func", None) is must_exist for m in getattr(t, "__metadata__", ())) or \
            any(walk(a) for a in typing.get_args(t))
    return any(getattr(m, "func", None) is must_exist for m in field.metadata) or walk(field.annotation)


def path_params(params: dict, model: type[BaseModel] = Params, prefix: str = "") -> dict[str, list[str]]:
    """Every path params names, by key: {"data.faq": [...], "data.kb": [...], ...} (model.base is not here: a name
    or a folder, see pipeline.models.local_model_path)."""
    found = {}
    for name, field in model.model_fields.items():
        value = params.get(name) if isinstance(params, dict) else None
        sub = model_of(field.annotation)
        if sub is not None and isinstance(value, dict):
            found |= path_params(value, sub, f"{prefix}{name}.")
        elif is_path(field) and value:
            values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            found[f"{prefix}{name}"] = [str(v) for v in values if v]
    return found


def key_lines(text: str) -> dict[tuple, int]:
    """The line of every key and list item of a YAML text, by its path: ("train", "loss") -> 97."""
    lines: dict[tuple, int] = {}

    def walk(node, path: tuple) -> None:
        children = node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else []
        for i, child in enumerate(children):
            key, value = (child[0].value, child[1]) if isinstance(node, yaml.MappingNode) else (i, child)
            lines[path + (key,)] = (child[0] if isinstance(child, tuple) else child).start_mark.line + 1
            walk(value, path + (key,))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _explain(error: dict, loc: tuple, params: dict) -> str | None:
    kind = error["type"]
    valid = list((model_at(loc[:-1]) or BaseModel).model_fields)
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        return f"unknown key; did you mean {near[0]}?" if near else f"unknown key (valid here: {', '.join(valid)})"
    if kind == "missing":
        parent = params
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        unknown = [k for k in parent if k not in valid] if isinstance(parent, dict) else []
        typo = difflib.get_close_matches(str(loc[-1]), [str(k) for k in unknown], n=1, cutoff=0.6)
        # misspelt: said once, by the unknown key's own message, on its own line
        return None if typo else "missing (no default: the stages reading it need a value)"
    text = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if not kind.startswith("value_error") and (value is None or isinstance(value, (str, int, float, bool))):
        text += f", got {value!r}"
    return text


def problems(params, sections: list[str] | None = None, root: Path | None = None, text: str | None = None,
             name: str = "params.yaml") -> list[str]:
    """Every problem of a parsed params file as `name:line: key.path: what is wrong`, in file order; with
    `sections`, only those of the sections a stage reads (and any unknown top-level key). `root`: the folder
    relative paths start from, where data files must exist; None: files are not looked at."""
    if not isinstance(params, dict):
        return [f"{name}: not a mapping of sections ({', '.join(Params.model_fields)})"]
    try:
        Params.model_validate(params, context={"root": root})
        errors = []
    except ValidationError as e:
        errors = e.errors()
    found = []
    for error in errors:
        loc = tuple(p for p in error["loc"] if p != "[key]")  # a mapping's key: the error names the key itself
        if sections is None or not loc or loc[0] in sections or error["type"] == "extra_forbidden" and len(loc) == 1:
            found.append((loc, _explain(error, loc, params)))
    found = [(loc, why) for loc, why in found if why]
    if sections is None:  # not in a stage's own check: the evaluate stage does not read data.testsets
        found += _guards(params)
    lines = key_lines(text) if text else {}
    out = []
    for loc, why in found:
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), 0)
        out.append((line, f"{name}{f':{line}' if line else ''}: {dotted(loc)}: {why}"))
    return [message for _, message in sorted(out, key=lambda x: x[0])]


def _guards(params: dict) -> list[tuple[tuple, str]]:
    """evaluate.guards must name held-out sets: found here, before training, not by the evaluate stage after it."""
    data, evaluate = params.get("data"), params.get("evaluate")
    if not isinstance(data, dict) or not isinstance(evaluate, dict) or not isinstance(evaluate.get("guards"), list):
        return []
    names = ["test", *(data.get("testsets") or {})]
    return [(("evaluate", "guards", i), f"{g!r} is not a held-out set (data.testsets names, or test: "
             f"{', '.join(names)})")
            for i, g in enumerate(evaluate["guards"]) if g not in names]
