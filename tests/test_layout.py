"""The layout holds: imports run one way (stages -> library, never back), serving loads nothing of training, data
curation or evaluation, and every stage lists in dvc.yaml exactly the pipeline modules it runs, so that `dvc repro`
re-runs a stage when, and only when, its code changed."""

import ast
from pathlib import Path

import yaml

from pipeline.paths import ROOT

PIPELINE = ROOT / "pipeline"
# lowest first: a module may import its own layer or a lower one, never a higher one
LAYERS = [{"paths", "schema", "params", "files", "models"}, {"retrieval", "embeddings"}, {"data"}, {"eval"},
          {"training", "serving", "report"}, {"stages", "check", "track", "testset"}]


def module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[Path]:
    """The pipeline modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for alias in node.names:  # `from pipeline.training import distributed` names a module
                target = module_file(f"{node.module}.{alias.name}") or module_file(node.module)
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {module_file(a.name) for a in node.names if a.name.startswith("pipeline.")}
    return {f for f in found if f and f.name != "__init__.py"}


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += imports_of(f)
    return seen


def concern(path: Path) -> str:
    rel = path.relative_to(PIPELINE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def layer(path: Path) -> int:
    return next(i for i, names in enumerate(LAYERS) if concern(path) in names)


MODULES = sorted(p for p in PIPELINE.rglob("*.py") if p.name != "__init__.py")


def test_imports_run_one_way_without_circles():
    upward = [f"{m.relative_to(ROOT)} imports {d.relative_to(ROOT)}" for m in MODULES for d in imports_of(m)
              if layer(d) > layer(m) or (concern(m) == "stages" and concern(d) == "stages" and d != m)]
    assert not upward
    circles = [m.relative_to(ROOT) for m in MODULES if any(m in closure(d) for d in imports_of(m))]
    assert not circles


def test_serving_loads_no_training_curation_or_evaluation_code():
    for m in PIPELINE.glob("serving/*.py"):
        assert not {concern(d) for d in closure(m)} & {"training", "data", "eval", "stages", "report"}, m


def test_every_stage_lists_exactly_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]  # python -m pipeline.stages.<name> [args]
        code = {str(f.relative_to(ROOT)) for f in closure(module_file(module))}
        listed = {d for d in (next(iter(x)) if isinstance(x, dict) else x for x in stage["deps"])
                  if d.startswith("pipeline/")}
        assert listed == code, (name, "missing:", code - listed, "not imported:", listed - code)
