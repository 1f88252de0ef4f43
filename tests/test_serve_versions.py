"""One consistent index version at a time: the index folder carries its model and a version record, a load never
mixes two builds, the service swaps versions only once one is loaded whole (and keeps the old one when a load
fails), and concurrent requests are searched in micro-batches that answer each as it would be answered alone."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from pipeline.params import InputError
from tests.conftest import run
from tests.test_serve import TOPICS, project, request, start_service  # noqa: F401 - project is a fixture

QUESTIONS = ["my puppy has parvovirus", "kennel cough", "cat kidney disease", "heartworm", "pony laminitis"]


def passages_of(index: Path) -> tuple[str, dict[str, str]]:
    info = json.loads((index / "info.json").read_text())
    texts = {p["id"]: p["text"] for p in map(json.loads, (index / "passages.jsonl").read_text().splitlines())}
    return info["version"]["id"], texts


def rebuild(root: Path, label: str, extra: int = 0) -> None:
    """New passages (same ids, other texts, `extra` more of them), and the index stage run again."""
    passages = [{"id": f"kb/{i}#{j}", "section": f"kb/{i}#{j}", "title": topic.title(), "heading": f"Part {j}",
                 "text": f"{label}: notes on {topic}, part {j}.", "source": f"{i}.md"}
                for i, topic in enumerate(TOPICS + [f"topic {n}" for n in range(extra)]) for j in (1, 2)]
    (root / "data/passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    run([sys.executable, "-m", "pipeline.stages.index", "base"], root)


def test_the_index_folder_is_one_self_contained_version(project):
    index = project / "models/index_base"
    info = json.loads((index / "info.json").read_text())
    assert info["model"]["path"] == "model" and (index / "model/config.json").is_file()
    assert set(info["version"]) == {"id", "built", "passages"} and info["version"]["passages"] == 12
    stages = yaml.safe_load((Path(__file__).parent.parent / "dvc.yaml").read_text())["stages"]
    for stage, out in [("index", "models/index"), ("index_base", "models/index_base")]:
        assert stages[stage]["outs"] == [{out: {"persist": True}}]  # else DVC deletes the served index first


def test_a_load_that_sees_the_folder_change_starts_again(project, tmp_path, monkeypatch):
    from pipeline.serving import versions
    from pipeline.serving.search import Searcher

    index = tmp_path / "index"
    shutil.copytree(project / "models/index_base", index)
    made = []

    def swapped_midway(*args, **kwargs):  # a new version renamed in while the first load reads the files
        searcher = Searcher(*args, **kwargs)
        if not made:
            info = json.loads((index / "info.json").read_text())
            info["version"]["id"] = "newer0000000"
            (index / "info.json").write_text(json.dumps(info))
        made.append(searcher.version["id"])
        return searcher

    monkeypatch.setattr(versions, "Searcher", swapped_midway)
    searcher = versions.load_consistent(index)
    assert made == [json.loads((project / "models/index_base/info.json").read_text())["version"]["id"], "newer0000000"]
    assert searcher.version["id"] == "newer0000000"
    info = json.loads((index / "info.json").read_text())
    (index / "info.json").write_text(json.dumps({**info, "model": {**info["model"], "sha256": "0" * 64}}))
    made.clear()
    with pytest.raises(InputError, match="the model changed after indexing"):  # the version's own fault: no retry
        versions.load_consistent(index)
    assert len(made) == 0


def test_a_batch_answers_each_request_as_alone(project, monkeypatch):
    from pipeline.serving.batcher import Batcher
    from pipeline.serving.search import Searcher

    searcher = Searcher(project / "models/index_base")
    jobs = [(["my puppy has parvovirus"], 3, "dense"), (["cat kidney disease", "kennel cough"], 1, "dense"),
            (["pony laminitis"], 5, "hybrid"), (["milk fever in cows"], 2, "hybrid"), (["heartworm"], 12, "dense")]
    alone = [searcher.search_batch(*job) for job in jobs]
    calls = []
    real = searcher.search_batch
    monkeypatch.setattr(searcher, "search_batch", lambda *a: calls.append(a) or real(*a))
    batcher = Batcher(lambda: searcher, wait_ms=200, max_queries=64)  # 200 ms: every job lands in one batch
    futures = [batcher.submit(*job) for job in jobs]
    together = [f.result(timeout=60) for f in futures]
    assert sorted((len(q), k, mode) for q, k, mode in calls) == [(2, 5, "hybrid"), (4, 12, "dense")]
    for one, many in zip(alone, together):
        assert [[(h["id"], h["score"], h["cosine"]) for h in r["hits"]] for r in one] == \
               [[(h["id"], h["score"], h["cosine"]) for h in r["hits"]] for r in many]


def test_answers_stay_consistent_while_the_index_is_rebuilt_and_reloaded(project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(project, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["serve"]["watch_seconds"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    index = root / "models/index_base"
    versions = dict([passages_of(index)])
    log = tmp_path / "serve.log"
    url, proc = start_service(index, log)
    answers, stop = [], threading.Event()

    def client(n: int) -> None:
        while not stop.is_set():
            q = QUESTIONS[n % len(QUESTIONS)]
            if n % 3 == 2:
                body = json.dumps({"queries": [q, QUESTIONS[0]], "k": 4, "mode": "hybrid"}).encode()
                status, got = request(url + "/search", body)
                answers.append((status, got.get("results", [got])))
            else:
                status, got = request(url + "/search?" + urllib.parse.urlencode({"q": q, "k": 3,
                                                                                "mode": ("dense", "hybrid")[n % 2]}))
                answers.append((status, [got]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        rebuild(root, "second", extra=1)  # while the clients query; the watcher notices the new version
        new, texts = passages_of(index)
        versions[new] = texts
        deadline = time.time() + 60
        while request(url + "/health")[1]["version"]["id"] != new and time.time() < deadline:
            time.sleep(0.2)
        assert request(url + "/health")[1]["version"]["id"] == new
        rebuild(root, "third", extra=2)
        status, reloaded = request(url + "/reload", b"")  # or asked for
        third, texts = passages_of(index)
        versions[third] = texts
        assert status == 200 and reloaded["version"]["id"] == third and reloaded["version"]["passages"] == 16
        time.sleep(1)
        info_file = index / "info.json"  # a broken version: the old one goes on serving
        info = json.loads(info_file.read_text())
        broken = {**info, "model": {**info["model"], "sha256": "0" * 64}, "version": {**info["version"], "id": "broken"}}
        (index / "info.tmp").write_text(json.dumps(broken))
        os.replace(index / "info.tmp", info_file)
        status, refused = request(url + "/reload", b"")
        assert status == 409 and "the model changed after indexing" in refused["error"]
        assert refused["version"]["id"] == third
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.terminate()
        proc.wait(timeout=30)
    assert answers and all(status == 200 for status, _ in answers), \
        [a for a in answers if a[0] != 200][:3]
    seen = set()
    for _, results in answers:
        for result in results:
            texts = versions[result["version"]]  # a version that was built, and only its passages
            seen.add(result["version"])
            assert all(texts.get(hit["id"]) == hit["text"] for hit in result["hits"]), result
    assert len(seen) == 3  # every version answered some requests
    lines = log.read_text().splitlines()
    assert any("kept serving version" in line and " WARNING " in line for line in lines)
    assert not [line for line in lines if " ERROR " in line]
