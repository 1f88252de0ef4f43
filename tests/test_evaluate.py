"""evaluate: its outputs are replaced together, only once everything succeeded."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.common import ROOT, load_params, set_params, write_beir

OUTPUTS = ["reports/metrics.json", "reports/per_query.csv", "reports/plots", "reports/report.md"]


@pytest.fixture
def evaluate_project(tmp_path, monkeypatch, tiny_model):
    """A project folder as the evaluate stage sees it: prepared test/val sets, a model, the baselines' runs."""
    from pipeline import baselines

    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "evaluate.depth": 6, "evaluate.max_seq_length": 16,
        "evaluate.bootstrap_samples": 50, "evaluate.report_examples": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    corpus = {f"d{i}": f"answer {i} about topic {i}" for i in range(6)}
    queries = {f"q{i}": f"question about topic {i}" for i in range(4)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(4)}
    for split in ("test", "val", "val_noisy"):
        write_beir(tmp_path / "data/prepared" / split, corpus, queries, qrels)
    shutil.copytree(tiny_model, tmp_path / "models/finetuned")
    monkeypatch.chdir(tmp_path)
    baselines.main()
    return tmp_path


def snapshot(root):
    files = {}
    for out in OUTPUTS:
        path = root / out
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            files[str(f.relative_to(root))] = f.read_bytes()
    return files, sorted(p.name for p in (root / "reports").iterdir())


def test_a_failure_leaves_every_previous_output(evaluate_project, monkeypatch):
    """metrics.json and per_query.csv used to be replaced before the plots and the report were made: a failure late
    in the stage left new metrics beside an old report. Now all four are renamed into place at the very end."""
    from pipeline import evaluate, report

    root = evaluate_project
    (root / "reports/plots").mkdir(parents=True)
    (root / "reports/plots/recall_at_k.csv").write_text("k,base\n1,0.5\n")
    for name, text in [("metrics.json", '{"old": 1}\n'), ("per_query.csv", "query_id\nold\n"), ("report.md", "old\n")]:
        (root / "reports" / name).write_text(text)
    before = snapshot(root)

    def fail(*args, **kwargs):
        raise RuntimeError("report failed")

    with monkeypatch.context() as m:
        m.setattr(report, "markdown", fail)
        with pytest.raises(RuntimeError, match="report failed"):
            evaluate.main()
    assert snapshot(root) == before

    evaluate.main()  # a run that succeeds replaces them all
    after = snapshot(root)
    assert after[1] == before[1]  # no temporaries left in reports/
    assert set(json.loads((root / "reports/metrics.json").read_text())) >= {"base", "finetuned", "finetuned_vs_base"}
    assert (root / "reports/per_query.csv").read_text().startswith("query_id,query,rank_base")
    assert (root / "reports/report.md").read_text().startswith("# Retrieval report")
    assert (root / "reports/plots/training_curves.png").is_file()
