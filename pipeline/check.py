"""`python -m pipeline.check`: params.yaml checked whole before anything runs, against its schema
(pipeline/schema.py): unknown keys (with the nearest valid one), wrong types, values out of range, data files that do
not exist, and files a stage reads that dvc.yaml does not track. Prints every problem, each with its line and key
path, and exits 1; or "params.yaml: ok". Each stage checks its own sections the same way when it starts
(pipeline.params.load_params).

`python -m pipeline.check --table`: the README's parameter table, made from the schema's descriptions and the values
params.yaml ships (tests/test_check.py keeps the README equal to it); `--readme` writes it into README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from pipeline.params import InputError, model_of, parse_params, problems
from pipeline.schema import Params
from pipeline.track import DVC_FILE, untracked


def check(path: str | Path = "params.yaml") -> list[str]:
    """Every problem of the file, in file order, then the untracked paths."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        params = parse_params(text, str(path))
    except InputError as e:
        return [str(e)]
    found = problems(params, None, Path(path).resolve().parent, text, str(path))
    if not found and DVC_FILE.is_file():
        stages = (yaml.safe_load(DVC_FILE.read_text(encoding="utf-8")) or {}).get("stages", {})
        found = [why for _, _, _, why in untracked(params, stages)]
    return found


def shown(value) -> str:
    """A value as the table shows it: numbers plain, the rest as YAML in backticks, long ones left to the file."""
    def flow(v) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(flow(x) for x in v) + "]"
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        return str(v)

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = flow(value)
    return "see `params.yaml`" if len(text) > 80 else f"`{text}`".replace("|", "\\|")


def rows(model: type[BaseModel], values: dict | None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, value, meaning) per key; a nested section's keys under its name, or one row where the section says so."""
    out = []
    for name, field in model.model_fields.items():
        key, sub = f"{prefix}{name}", model_of(field.annotation)
        given = isinstance(values, dict) and name in values
        value = values[name] if given else field.default if not field.is_required() else None
        if sub is not None and not sub.one_row:
            out += rows(sub, value if isinstance(value, dict) else {}, f"{key}.")
            continue
        meaning = " ".join((field.description or (sub.__doc__ if sub else "") or "").split())
        out.append((f"`{key}`", shown(value) if given or not field.is_required() else "(required)", meaning))
    return out


def table(path: str | Path = "params.yaml") -> str:
    params = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    lines = ["| key | default | what it does |", "|---|---|---|"]
    lines += [f"| {key} | {value} | {meaning} |" for key, value, meaning in rows(Params, params)]
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, new_table: str) -> str:
    """README.md's text with the table of its "## Parameters" section replaced."""
    start = readme.index("\n## Parameters\n")
    end = readme.find("\n## ", start + 1) % (len(readme) + 1)
    lines = readme[start:end].splitlines(keepends=True)
    rows_at = [i for i, line in enumerate(lines) if line.startswith("|")]
    section = "".join(lines[:rows_at[0]]) + new_table + "".join(lines[rows_at[-1] + 1:])
    return readme[:start] + section + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="the file to check (default: params.yaml)")
    parser.add_argument("--table", action="store_true", help="print the README's parameter table instead")
    parser.add_argument("--readme", action="store_true", help="write that table into README.md's Parameters section")
    args = parser.parse_args(argv)
    if args.table:
        sys.stdout.write(table(args.params))
        return 0
    if args.readme:
        readme = Path("README.md")
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8"), table(args.params)), encoding="utf-8")
        return 0
    found = check(args.params)
    for line in found or [f"{args.params}: ok"]:
        print(line, file=sys.stderr if found else sys.stdout)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
