"""evaluate: every held-out set scored under stable keys, a verdict per set, do no harm, and outputs replaced
together only once everything succeeded."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from pipeline.data.readers import write_beir
from pipeline.params import InputError, load_params, set_params
from pipeline.paths import ROOT

OUTPUTS = ["reports/metrics.json", "reports/per_query.csv", "reports/plots", "reports/report.md", "reports/serve.json"]


@pytest.fixture
def evaluate_project(tmp_path, monkeypatch, tiny_model):
    """A project folder as the evaluate stage sees it: prepared test/val sets, a model, the baselines' runs."""
    from pipeline.stages import baselines

    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "evaluate.depth": 6, "encode.max_seq_length": 16,
        "evaluate.bootstrap_samples": 50, "evaluate.report_examples": 2, "evaluate.guards": ["users"]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    corpus = {f"d{i}": f"answer {i} about topic {i}" for i in range(6)}
    queries = {f"q{i}": f"question about topic {i}" for i in range(4)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(4)}
    for split in ("test", "val", "val_users", "testsets/users"):
        write_beir(tmp_path / "data/prepared" / split, corpus, queries, qrels)
    (tmp_path / "data/passages.jsonl").write_text("".join(  # served passages no set judges: own corpora scored
        json.dumps({"id": f"kb/k{i}", "section": f"kb/k{i}", "title": "", "heading": "", "text": f"knowledge {i}",
                    "source": "k.md"}) + "\n" for i in range(3)))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/data_stats.json").write_text('{"pairs": {"train_by_source": {"faq": 9, "glossary": 1}}}')
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
    from pipeline import report
    from pipeline.stages import evaluate

    root = evaluate_project
    (root / "reports/plots").mkdir(parents=True)
    (root / "reports/plots/recall_at_k.csv").write_text("k,base\n1,0.5\n")
    for name, text in [("metrics.json", '{"old": 1}\n'), ("per_query.csv", "query_id\nold\n"), ("report.md", "old\n"),
                       ("serve.json", "{}\n")]:
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
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert set(metrics) >= {"base", "finetuned", "finetuned_vs_base", "testsets", "finetuned_val_users"}
    assert set(metrics["testsets"]["users"]) == {"base", "finetuned", "bm25", "hybrid", "finetuned_vs_base"}
    per_query = (root / "reports/per_query.csv").read_text().splitlines()
    assert per_query[0].startswith("set,query_id,query,rank_base")
    assert sorted({line.split(",")[0] for line in per_query[1:]}) == ["test", "users"]  # every held-out set
    report_text = (root / "reports/report.md").read_text()
    assert report_text.startswith("# Retrieval report\n\n- **test** (4 questions): fine-tuned")
    assert "- **users** (4 questions)" in report_text and "— **thin evidence**: 4 questions (fewer than 30)" in report_text
    assert "guard set users is thin evidence, 4 questions (fewer than 30)" in report_text  # the decision rests on it
    assert json.loads((root / "reports/serve.json").read_text())["guards"] == ["users"]
    assert (root / "reports/plots/training_curves.png").is_file()


def comparison(delta, low, high):
    return {"finetuned_vs_base": {"ndcg@10": {"delta": delta, "ci_low": low, "ci_high": high, "p_value": 0.01}}}


def test_a_significant_loss_on_a_guard_set_serves_the_base_model():
    from pipeline.eval.gate import serving_decision

    metrics = {**comparison(0.1, 0.05, 0.15), "testsets": {"real": comparison(-0.09, -0.12, -0.06),
                                                            "other": comparison(-0.2, -0.3, -0.1)}}
    evidence = {"test": {"thin": False}, "real": {"thin": False},
                "other": {"thin": True, "why": "10 questions (fewer than 30)"}}
    decision = serving_decision(metrics, ["real"], evidence, "ndcg@10")
    assert decision["model"] == "base"
    assert decision["reason"] == "worse than the base model on real: ndcg@10 -0.0900 [-0.1200, -0.0600]"
    assert decision["warnings"] == [] and decision["thin_evidence"] == []
    # a loss whose interval includes zero is no reason; a set that is not a guard is not asked
    metrics["testsets"]["real"] = comparison(-0.03, -0.07, 0.01)
    assert serving_decision(metrics, ["real", "test"], evidence, "ndcg@10")["model"] == "finetuned"
    # a guard set that is thin evidence: the decision says it rests on it
    thin = serving_decision(metrics, ["other"], evidence, "ndcg@10")
    assert thin["thin_evidence"] == ["other"]
    assert thin["warnings"][0].startswith("guard set other is thin evidence, 10 questions (fewer than 30)")
    with pytest.raises(InputError, match="evaluate.guards names"):
        serving_decision(metrics, ["missing"], evidence, "ndcg@10")


def test_thin_evidence_counts_the_topics_the_interval_resamples():
    from pipeline.eval.evidence import set_evidence

    cfg = {"thin_questions": 30, "thin_topics": 10}
    interval = {"delta": 0.03, "ci_low": 0.008, "ci_high": 0.073}
    qrels = {f"q{i}": {"d": 1} for i in range(7)}
    topics = pd.Series({f"q{i}": f"t{i % 3}" for i in range(7)})  # 7 questions on 3 topics
    e = set_evidence(qrels, topics, interval, cfg)
    assert e == {"questions": 7, "topics": 3, "ci_width": 0.065, "thin": True,
                 "why": "7 questions (fewer than 30) and 3 topics (fewer than 10; the interval resamples whole topics)"}
    many = {f"q{i}": {"d": 1} for i in range(40)}
    assert set_evidence(many, None, interval, cfg)["thin"] is False  # no topics: each question is its own unit
    few_topics = set_evidence(many, pd.Series({f"q{i}": f"t{i % 4}" for i in range(40)}), interval, cfg)
    assert few_topics["thin"] and few_topics["topics"] == 4 and few_topics["why"].startswith("4 topics")
    # a question without a topic is a unit of its own, as the cluster bootstrap counts it
    partial = pd.Series({f"q{i}": "t" for i in range(30)})
    assert set_evidence(many, partial, interval, cfg)["topics"] == 11
