"""`python -m pipeline.track PATH ...`: make DVC track a file or folder that params.yaml names outside data/raw/ (a
FAQ on a shared drive, a model folder): it is added to the deps of every stage in dvc.yaml that reads the key
naming it (the stages listing that key, or its section, under `params:`), so that editing it re-runs them. Without
a PATH, every path params.yaml names that a stage reading it does not track yet.

    python -m pipeline.track /srv/support/faq.parquet
    dvc.yaml: prepare, passages now depend on /srv/support/faq.parquet (data.faq)

dvc.yaml is edited as text, one line added to a stage's deps, so its comments and layout stay; the result is parsed
back and must equal the old file plus those deps, or nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import yaml

from pipeline.files import atomic_file
from pipeline.models import local_model_path
from pipeline.params import InputError, load_params, path_params, repo_path, require_tracked, run_main

log = logging.getLogger("pipeline.track")
DVC_FILE = Path("dvc.yaml")


def named_paths(params: dict) -> dict[str, list[str]]:
    """Every file or folder params names, by key, model.base included when it is a local folder."""
    paths = path_params(params)
    base = (params.get("model") or {}).get("base")
    if base and local_model_path(base):
        paths["model.base"] = [base]
    return paths


def stages_reading(stages: dict, key: str) -> list[str]:
    """The stages of dvc.yaml whose `params:` list the key or a section holding it (data.faq: `data.faq`, `data`)."""
    return [name for name, stage in stages.items()
            if any(isinstance(p, str) and (key == p or key.startswith(p + ".")) for p in stage.get("params") or [])]


def untracked(params: dict, stages: dict) -> list[tuple[str, str, str, str]]:
    """(stage, key, path, why) for each existing path a stage reads that is not among its deps (require_tracked's
    message). A path that does not exist is the schema's error, not this one."""
    found = []
    for key, values in named_paths(params).items():
        for value in (v for v in values if repo_path(v).exists()):
            for stage in stages_reading(stages, key):
                try:
                    require_tracked(stage, {key: [value]})
                except InputError as e:
                    found.append((stage, key, value, str(e)))
    return found


def add_dep(text: str, stage: str, dep: str) -> str:
    """dvc.yaml's text with `dep` appended to the deps of `stage`, in the indentation of the items above it."""
    lines = text.splitlines(keepends=True)
    indent = lambda line: len(line) - len(line.lstrip(" "))  # noqa: E731
    content = lambda line: line.strip() and not line.lstrip().startswith("#")  # noqa: E731
    start = next((i for i, line in enumerate(lines) if re.match(rf"^ +{re.escape(stage)}:\s*(#.*)?$", line)), None)
    if start is None:
        raise InputError(f"{DVC_FILE}: no stage '{stage}'")
    deps = None
    for i in range(start + 1, len(lines)):
        if content(lines[i]) and indent(lines[i]) <= indent(lines[start]):
            break
        if re.match(r"^ +deps:\s*(#.*)?$", lines[i]):
            deps = i
            break
    if deps is None:
        raise InputError(f"{DVC_FILE}: stage '{stage}' has no block list of deps to add {dep} to: add it by hand")
    last, item_indent = deps, indent(lines[deps]) + 2
    for i in range(deps + 1, len(lines)):
        if content(lines[i]):
            if indent(lines[i]) <= indent(lines[deps]):
                break
            if lines[i].lstrip().startswith("- ") and last == deps:
                item_indent = indent(lines[i])
            last = i
    scalar = dep if yaml.safe_load(f"- {dep}") == [dep] else json.dumps(dep)  # quoted where YAML would misread it
    lines.insert(last + 1, f"{' ' * item_indent}- {scalar}\n")
    return "".join(lines)


def track(targets: list[str], params: dict, text: str) -> tuple[str, list[str]]:
    """dvc.yaml's new text and one line per stage-and-path added. A target must be a path params names, or a folder
    holding one: which stages read a file is known from the key naming it."""
    original, stages = text, yaml.safe_load(text)["stages"]
    named = named_paths(params)
    missing = untracked(params, stages)
    if targets:
        wanted = {repo_path(t).resolve(): t for t in targets}
        unknown = [t for t in targets if not any(
            repo_path(v).resolve() == repo_path(t).resolve() or repo_path(t).resolve() in repo_path(v).resolve().parents
            for vs in named.values() for v in vs)]
        if unknown:
            raise InputError(f"params.yaml names no {', '.join(unknown)}: point a data.* key (or model.base) at it "
                             "first, then track it")
        missing = [(s, k, next((t for p, t in wanted.items() if p == repo_path(v).resolve() or
                                p in repo_path(v).resolve().parents), None), why) for s, k, v, why in missing]
        missing = [m for m in missing if m[2] is not None]
    added, done = [], set()
    for stage, key, dep, _ in missing:
        if (stage, dep) not in done:
            done.add((stage, dep))
            text = add_dep(text, stage, dep)
            added.append(f"{DVC_FILE}: stage {stage} now depends on {dep} ({key})")
    expected = yaml.safe_load(original)
    for stage, dep in sorted(done, key=lambda x: list(stages).index(x[0])):
        expected["stages"][stage]["deps"].append(dep)
    if yaml.safe_load(text) != expected:
        raise InputError(f"{DVC_FILE}: adding the deps as text changed more than them: add them by hand ({added})")
    return text, added


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="paths params.yaml names (none: every untracked one)")
    args = parser.parse_args(argv)
    text = DVC_FILE.read_text(encoding="utf-8")
    new, added = track(args.paths, load_params(), text)
    if new != text:
        with atomic_file(DVC_FILE) as tmp:
            tmp.write_text(new, encoding="utf-8")
    for line in added or [f"{DVC_FILE}: every path params.yaml names is tracked by the stages reading it"]:
        log.info("%s", line)


if __name__ == "__main__":
    run_main(main)
