"""End to end under DVC, in a throw-away git repo: dvc repro, a no-op second run, per-parameter granularity,
dvc push / dvc pull into a fresh clone, search and compare on the result, and a clean failure on bad input.

A tiny randomly initialised BERT (conftest) and a few training steps keep it to a couple of minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.params import set_params
from tests.conftest import ROOT, bundled_project, run

STAGES = ["passages", "prepare", "train", "baselines", "evaluate", "index", "index_base", "export"]
READS_BASE_MODEL = ["passages", "prepare", "train", "baselines", "index", "index_base", "export"]
METRIC_KEYS = ["mrr@10", "ndcg@10", "map@100", "recall@1", "recall@5", "recall@10", "recall@20"]


def set_repo_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(set_params(params, changes), sort_keys=False))


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model) -> Path:
    repo = bundled_project(tmp_path_factory.mktemp("project") / "repo", tiny_model)
    # the tiny model is a local folder outside the project: a dependency of every stage that loads model.base
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    for stage in READS_BASE_MODEL:
        stages["stages"][stage]["deps"].append(tiny_model)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)  # as a user's clone: dvclive reads the current revision
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == STAGES, out.stdout
    return repo


def test_outputs_and_metric_file_shape(repo):
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    blocks = [metrics, metrics["testsets"]["pet_owners"]]  # the main test set's keys, and each named set's
    for block in blocks:
        for system in ["base", "finetuned", "bm25", "hybrid"]:
            assert list(block[system]) == METRIC_KEYS
            assert all(0.0 <= v <= 1.0 for v in block[system].values())
    for system in ["base_val", "finetuned_val", "base_val_users", "finetuned_val_users"]:
        assert list(metrics[system]) == METRIC_KEYS
    for comp in [metrics["finetuned_vs_base"], metrics["finetuned_vs_bm25"], blocks[1]["finetuned_vs_base"],
                 metrics["finetuned_val_users_vs_base_val_users"]]:
        for m in ["mrr@10", "ndcg@10"]:
            t = comp[m]
            assert set(t) == {"delta", "ci_low", "ci_high", "p_value"} and t["ci_low"] <= t["delta"] <= t["ci_high"]
    assert set(metrics["no_match"]) == {f"{split}_{k}" for split in ("val", "test")
                                        for k in ("precision", "recall", "false_flags")} | {"threshold", "unanswerable_share"}
    # every prepared set carries its topics: the intervals are clustered by them, the no-match calibration uses them
    for name in ("test", "val", "val_users"):
        queries = [json.loads(line) for line in (repo / f"data/prepared/{name}/queries.jsonl").read_text().splitlines()]
        assert all(q.get("topic") for q in queries), name
    assert all(p.get("topic") for p in map(json.loads, (repo / "data/passages.jsonl").read_text().splitlines()))
    stats = json.loads((repo / "reports/data_stats.json").read_text())
    assert stats["pairs"]["train"] == 48 and stats["pairs"]["test_queries"] > 0
    assert (repo / "models/finetuned/model.safetensors").is_file()
    for index in ["models/index", "models/index_base"]:
        assert (repo / index / "dense.faiss").is_file() and (repo / index / "bm25").is_dir()
    served = [json.loads(line) for line in (repo / "data/passages.jsonl").read_text().splitlines()]
    assert (repo / "models/index/passages.jsonl").read_text() == (repo / "data/passages.jsonl").read_text()
    assert {"kb/canine-parvovirus#1", "faq/1"} <= {p["id"] for p in served}
    assert (repo / "reports/train/plots/metrics/eval/val_cosine_ndcg@10.tsv").is_file()
    for png in ["recall_at_k", "rank_change", "score_distributions", "training_curves"]:
        assert (repo / f"reports/plots/{png}.png").stat().st_size > 1000
    per_query = (repo / "reports/per_query.csv").read_text().splitlines()
    assert per_query[0].startswith("set,query_id,query,rank_base,rank_finetuned,rank_bm25,rank_hybrid,rr@10_base")
    assert len(per_query) - 1 == stats["pairs"]["test_queries"] + 170  # the FAQ split and the 170 pet owners' questions
    report = (repo / "reports/report.md").read_text()
    assert "| fine-tuned |" in report and "![recall@k](plots/recall_at_k.png)" in report
    assert "- **pet_owners** (170 questions): fine-tuned" in report.split("## Main test set")[0]
    assert json.loads((repo / "reports/serve.json").read_text())["guards"] == []  # as the fixture set them
    evidence = metrics["evidence"]  # per set: what its interval rests on
    assert set(evidence) == {"test", "pet_owners", "val", "val_users"}
    assert evidence["pet_owners"] == {"questions": 170, "topics": 16, "thin": False, "why": None,
                                      "ci_width": evidence["pet_owners"]["ci_width"]}
    assert evidence["pet_owners"]["ci_width"] == pytest.approx(
        blocks[1]["finetuned_vs_base"]["ndcg@10"]["ci_high"] - blocks[1]["finetuned_vs_base"]["ndcg@10"]["ci_low"], abs=1e-4)
    # generated data and models are DVC's, not git's
    ignored = run(["git", "check-ignore", "data/prepared", "models/finetuned", "models/index", "models/index_base",
                   "reports/baselines"], repo)
    assert len(ignored.stdout.split()) == 5


def test_second_repro_does_nothing(repo):
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == [] and "up to date" in out.stdout


@pytest.mark.parametrize("param, value, expected", [
    ("evaluate.rrf_k", 10, ["evaluate", "index", "index_base"]),  # the indexes' hybrid fuses as evaluated
    ("evaluate.guards", ["pet_owners"], ["evaluate", "index", "export"]),  # the serving decision: what is served
    ("index.nprobe", 16, ["index", "index_base"]),
    ("encode.batch_size", 8, ["baselines", "evaluate", "index", "index_base", "export"]),  # served = scored
    ("passages", {"strategy": "window", "window_tokens": 20, "overlap_tokens": 4, "include_faq_answers": True,
                  "warn_above_tokens": 2048},
     ["passages", "baselines", "evaluate", "index", "index_base", "export"]),  # a new cut: never training
    ("evaluate.depth", 40, ["baselines", "evaluate", "index", "index_base", "export"]),
    ("train.learning_rate", 3.0e-5, ["train", "evaluate", "index", "export"]),
])
def test_a_parameter_reruns_only_what_reads_it(repo, param, value, expected):
    set_repo_params(repo, {param: value})
    assert stages_run(run(["dvc", "repro"], repo).stdout) == expected


def test_push_then_pull_in_a_fresh_clone_needs_no_rerun(repo, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline run"], repo)
    run(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models/finetuned").exists()
    run(["dvc", "pull"], clone)
    assert (clone / "models/finetuned/model.safetensors").is_file()
    out = run(["dvc", "repro"], clone)
    assert stages_run(out.stdout) == [] and "up to date" in out.stdout


def strict_json(text: str):
    """JSON as other languages read it: Python's json.loads would take NaN and Infinity, which no JSON has."""
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def served_int8_scores(repo: Path, name: str) -> dict:
    """mrr@10 and ndcg@10 of the int8 export's query vectors against the passage vectors stored in the index, as
    `search --backend onnx-int8` retrieves, scored as evaluate scores (evaluate.depth 50, as the fixture set it)."""
    import faiss
    import torch

    from pipeline.eval.heldout import found_sections, scored_set
    from pipeline.eval.metrics import per_query_metrics, summary
    from pipeline.retrieval import top_k
    from pipeline.serving.onnx_encoder import OnnxEncoder

    index = faiss.read_index(str(repo / "models/index/dense.faiss"))
    passages = [json.loads(line) for line in (repo / "models/index/passages.jsonl").read_text().splitlines()]
    corpus, queries, qrels, section_of = scored_set(repo / "data/prepared/testsets" / name, passages)
    assert section_of is not None and list(corpus) == [p["id"] for p in passages]  # scored on the served passages
    # in the export's batches: int8 quantises each batch's activations with the batch's own scale, so other batches
    # give other vectors (CI once saw mrr@10 0.0477 against the export's 0.0482 with batches of 32)
    batch_size = int(yaml.safe_load((repo / "params.yaml").read_text())["encode"]["batch_size"])
    q_emb = torch.from_numpy(OnnxEncoder(repo / "models/onnx/model_int8.onnx", 32).encode(list(queries.values()),
                                                                                          batch_size=batch_size))
    run = top_k(q_emb, torch.from_numpy(index.reconstruct_n(0, index.ntotal)), list(queries), list(corpus), 50)
    cfg = {"mrr_k": 10, "ndcg_k": 10, "map_k": 50, "recall_k": [], "depth": 50}
    scores = summary(per_query_metrics(found_sections(run, qrels, section_of), qrels, cfg), cfg)
    return {k: scores[k] for k in ("mrr@10", "ndcg@10")}


def test_search_and_compare_on_the_built_index(repo):
    out = run(["python", "-m", "pipeline.serving.search", "What are the symptoms of parvovirus?", "-k", "3", "--json"], repo)
    result = strict_json(out.stdout)
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and isinstance(result["no_good_match"], bool)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert {"id", "section", "title", "text", "source"} <= set(hits[0])
    base_hits = strict_json(run(["python", "-m", "pipeline.serving.search", "What are the symptoms of parvovirus?", "-k", "3",
                                "--json", "--model", "base"], repo).stdout)["hits"]
    assert [h["rank"] for h in base_hits] == [1, 2, 3]
    # each index says which model encoded it: the base model's is its own stage's output, not the fine-tuned one's
    info = {name: json.loads((repo / f"models/{name}/info.json").read_text()) for name in ["index", "index_base"]}
    assert info["index"]["model"]["name"] == "models/finetuned" and info["index"]["model"]["path"] == "model"
    assert (repo / "models/index/model/model.safetensors").is_file()  # a version carries the model that encoded it
    assert info["index_base"]["model"]["name"] == yaml.safe_load((repo / "params.yaml").read_text())["model"]["base"]
    assert info["index"]["model"]["sha256"] != info["index_base"]["model"]["sha256"]
    assert info["index"]["no_match_threshold"] == json.loads((repo / "reports/metrics.json").read_text())["no_match"]["threshold"]
    # the ONNX export encodes as PyTorch does: the same passages in the same order, the same scores on every set
    onnx = strict_json(run(["python", "-m", "pipeline.serving.search", "What are the symptoms of parvovirus?", "-k", "3",
                           "--json", "--backend", "onnx"], repo).stdout)
    torch_hits = strict_json(run(["python", "-m", "pipeline.serving.search", "What are the symptoms of parvovirus?",
                                  "-k", "4", "--json", "--backend", "torch"], repo).stdout)["hits"]
    assert [h["score"] for h in onnx["hits"]] == pytest.approx([h["score"] for h in torch_hits[:3]], abs=1e-3)
    # the same passages in the same order, except where two passages' scores are within the backends' float noise
    # (the tiny test model ties some, the 4th with the 3rd included): there either order is the same answer
    scores = [h["score"] for h in torch_hits]
    for i, (a, b) in enumerate(zip(onnx["hits"], torch_hits)):
        tied = any(abs(scores[i] - scores[j]) < 1e-3 for j in (i - 1, i + 1) if 0 <= j < len(scores))
        assert a["id"] == b["id"] or tied, (i, a["id"], b["id"], scores)
    export = json.loads((repo / "reports/export.json").read_text())
    assert export["onnx"]["ndcg_change_vs_torch"] == {"test": 0.0, "pet_owners": 0.0}
    assert set(export["onnx_int8"]) >= {"test", "pet_owners", "passages_per_second", "speedup_vs_torch"}
    served_export = json.loads((repo / "models/onnx/export.json").read_text())
    assert served_export["sha256"] == info["index"]["model"]["sha256"]
    # what `--backend auto` chooses by: the report's own figures, under the names --backend takes
    assert {b: m["passages_per_second"] for b, m in served_export["backends"].items()} == {
        b.replace("_", "-"): export[b]["passages_per_second"] for b in ("torch", "onnx", "onnx_int8")}
    assert served_export["backends"]["onnx-int8"]["ndcg_change_vs_torch"] == export["onnx_int8"]["ndcg_change_vs_torch"]
    # each backend is scored as search serves it: its queries against the vectors in the index PyTorch built. So
    # torch is the served model's score in metrics.json, and int8 is int8 queries against the index's passages
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    served = json.loads((repo / "reports/serve.json").read_text())["model"]
    for name, block in [("test", metrics), ("pet_owners", metrics["testsets"]["pet_owners"])]:
        assert export["torch"][name] == {k: block[served][k] for k in ("mrr@10", "ndcg@10")}, name
    assert set(export["setup"]["scored_on"]) == {"test", "pet_owners"} and export["setup"]["cpu"]
    for backend, floor in [("torch", 0.9999), ("onnx", 0.9999), ("onnx_int8", 0.0)]:
        agreement = export[backend]["agreement_with_index"]
        assert floor <= agreement["min_cosine"] <= agreement["mean_cosine"] <= 1.0 + 1e-5, backend
    # one unit of the 4th decimal apart at most: ONNX Runtime's int8 kernels in another process may land a mean on
    # the other side of the rounding (CI saw 0.0411 against 0.0412 once)
    assert export["onnx_int8"]["pet_owners"] == pytest.approx(served_int8_scores(repo, "pet_owners"), abs=1.5e-4)
    out = run(["python", "-m", "pipeline.serving.compare", "my cat drinks a lot of water", "-k", "2"], repo)
    assert "BASE MODEL" in out.stdout and "FINE-TUNED MODEL" in out.stdout and "2. [" in out.stdout


def test_bad_input_fails_cleanly_and_writes_nothing(repo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(repo, bad, ignore=shutil.ignore_patterns(".dvc", ".git", "data", "models", "reports"))
    shutil.copytree(repo / "data/raw", bad / "data/raw")  # every file params.yaml names exists (pipeline.check)
    (bad / "data/raw/faq.csv").write_text("question,answer,focus\nWhat is parvo?,A virus.,p\nWhat is FIV?,,f\n")
    out = run(["python", "-m", "pipeline.stages.prepare"], bad, check=False)
    assert out.returncode == 1
    assert "faq.csv:3: field 'answer' is empty" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (bad / "data/prepared").exists() and not (bad / "reports/data_stats.json").exists()


def test_dvc_plots_output_is_ignored(tmp_path):
    """`dvc plots show` / `dvc plots diff` write dvc_plots/index.html into the project: generated, never committed."""
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    run(["git", "init", "-q"], tmp_path)
    assert run(["git", "check-ignore", "dvc_plots/index.html"], tmp_path, check=False).returncode == 0


def test_a_guard_loss_makes_the_index_serve_the_base_model(repo, tmp_path):
    """Do no harm: when evaluate finds the fine-tuned model significantly worse on a guard set (reports/serve.json),
    the index stage encodes the knowledge base with the base model and says so in info.json."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    reason = "worse than the base model on pet_owners: ndcg@10 -0.0900 [-0.1200, -0.0600]"
    (copy / "reports/serve.json").write_text(json.dumps({"model": "base", "guards": ["pet_owners"], "warnings": [],
                                                         "reason": reason}))
    out = run(["python", "-m", "pipeline.stages.index"], copy)
    assert "serving the base model, not the fine-tuned one: " + reason in out.stderr
    info = json.loads((copy / "models/index/info.json").read_text())
    base = yaml.safe_load((copy / "params.yaml").read_text())["model"]["base"]
    assert info["served"] == "base" and info["reason"] == reason and info["model"]["name"] == base
    import faiss

    served = faiss.read_index(str(copy / "models/index/dense.faiss"))
    base_index = faiss.read_index(str(copy / "models/index_base/dense.faiss"))
    assert served.ntotal == base_index.ntotal
    assert (served.reconstruct_n(0, 5) == base_index.reconstruct_n(0, 5)).all()  # the base model's vectors


def test_a_thin_set_is_called_thin_next_to_its_figure_and_in_the_serving_decision(repo, tmp_path):
    """The bundled pet_owners set (170 questions, 16 topics) under a bar it does not reach: the report says "thin
    evidence" beside its interval, the log warns, and the serving decision says it rests on it as a guard set."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    set_repo_params(copy, {"evaluate.thin_questions": 200, "evaluate.guards": ["pet_owners"]})
    out = run(["python", "-m", "pipeline.stages.evaluate"], copy)
    why = "170 questions (fewer than 200)"
    assert f"pet_owners is thin evidence, {why}: its interval" in out.stderr
    headline = (copy / "reports/report.md").read_text().split("## Main test set")[0]
    line = next(x for x in headline.splitlines() if x.startswith("- **pet_owners**"))
    assert line.endswith(f"— **thin evidence**: {why}; this interval means little")
    serve = json.loads((copy / "reports/serve.json").read_text())
    assert "pet_owners" in serve["thin_evidence"]
    assert any(w.startswith(f"guard set pet_owners is thin evidence, {why}") for w in serve["warnings"])
    assert json.loads((copy / "reports/metrics.json").read_text())["evidence"]["pet_owners"]["thin"] is True


def test_a_changed_merge_weight_or_precision_is_explained_against_the_committed_run(repo, tmp_path):
    """The committed run (git HEAD) chose another merge weight and trained in bf16; this one, in fp32, chose its own:
    the report says both, with the validation figures by weight side by side, and how far the figures moved."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    selection_file = copy / "reports/train/metrics.json"
    now = json.loads(selection_file.read_text())
    assert now["precision"] == "fp32" and now["merge_alpha"] is not None
    before = {**now, "precision": "bf16", "merge_alpha": 1.0 if now["merge_alpha"] != 1.0 else 0.0,
              "merge_val_users_ndcg@10": {k: round(v - 0.01, 4) for k, v in now["merge_val_users_ndcg@10"].items()}}
    selection_file.write_text(json.dumps(before))
    run(["git", "add", "-f", "reports"], copy)
    run(["git", "commit", "-qm", "the committed run"], copy)
    selection_file.write_text(json.dumps(now))  # this run's own, as train wrote it
    out = run(["python", "-m", "pipeline.stages.evaluate"], copy)
    assert f"since the committed run: Validation now chose merge weight {now['merge_alpha']:g}" in out.stderr
    report = (copy / "reports/report.md").read_text()
    section = report.split("## Since the last committed run")[1].split("\n## ")[0]
    assert f"the committed run chose {before['merge_alpha']:g}" in section
    assert "Trained in **fp32** on this host; the committed run trained in bf16" in section
    w = next(iter(now["merge_val_users_ndcg@10"]))
    row = next(x for x in section.splitlines() if x.startswith(f"| {float(w):g}"))
    assert f"| {now['merge_val_users_ndcg@10'][w]:.4f} | {before['merge_val_users_ndcg@10'][w]:.4f} |" in row
    assert "| pet_owners (finetuned) |" in section  # how far each set's figure moved since the committed run
    # a re-run that reproduces the committed one says nothing
    run(["git", "add", "-f", "reports"], copy)
    run(["git", "commit", "-qm", "this run"], copy)
    run(["python", "-m", "pipeline.stages.evaluate"], copy)
    assert "## Since the last committed run" not in (copy / "reports/report.md").read_text()


def changed_stages(repo: Path) -> set[str]:
    """Stages `dvc status` reports as changed (it names each one on a line ending with ':')."""
    out = run(["dvc", "status"], repo).stdout
    return {line.strip().rstrip(":") for line in out.splitlines() if line and not line.startswith(("\t", " "))} & set(STAGES)


def test_a_source_outside_data_raw_is_a_tracked_dependency(repo, tmp_path):
    """A FAQ kept elsewhere: prepare refuses it until dvc.yaml lists it, then an edited answer re-runs prepare.
    And a file a stage never reads re-runs nothing: the glossary is not a dependency of the index stages."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    outside = tmp_path / "elsewhere" / "faq.csv"
    outside.parent.mkdir()
    shutil.copy(copy / "data/raw/faq.csv", outside)
    set_repo_params(copy, {"data.faq": [str(outside)]})
    refused = run(["python", "-m", "pipeline.stages.prepare"], copy, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"params.yaml: data.faq {outside} is not a dependency of stage 'prepare' in dvc.yaml" in refused.stderr
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())
    stages["stages"]["prepare"]["deps"].append(str(outside))
    (copy / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    run(["dvc", "repro", "prepare"], copy)
    assert "prepare" not in changed_stages(copy)
    outside.write_text(outside.read_text().replace("Parvo spreads", "Parvovirus spreads", 1))
    assert "prepare" in changed_stages(copy)

    glossary = repo / "data/raw/glossary.csv"
    original = glossary.read_text()
    try:
        glossary.write_text(original.replace("A highly contagious", "A very contagious", 1))
        changed = changed_stages(repo)
        assert "prepare" in changed and not {"index", "index_base"} & changed
    finally:
        glossary.write_text(original)


def test_the_pipeline_run_twice_in_fp32_gives_identical_metrics(repo, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(repo, copy, symlinks=True)
    out = run(["dvc", "repro", "-f"], copy)
    assert stages_run(out.stdout) == STAGES
    for name in ["reports/metrics.json", "reports/per_query.csv"]:
        assert (copy / name).read_text() == (repo / name).read_text(), name
    timing = {"train_minutes", "validation_minutes", "pairs_per_second"}
    first, second = (json.loads((r / "reports/train/metrics.json").read_text()) for r in (repo, copy))
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
