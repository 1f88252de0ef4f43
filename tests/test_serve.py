"""The index as a RAG application uses it: the library from another folder, the model identity check, the service
on loopback, and clear errors for bad input from both the service (4xx) and the command (exit 1)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.params import InputError
from tests.conftest import run

TOPICS = ["parvovirus in puppies", "kennel cough in dogs", "feline kidney disease", "heartworm and mosquitoes",
          "laminitis in ponies", "milk fever in dairy cows"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model) -> Path:
    """A project folder holding its base model and a built index (`python -m pipeline.stages.index base`)."""
    root = tmp_path_factory.mktemp("served") / "project"
    shutil.copytree(tiny_model, root / "models/base")
    passages = [{"id": f"kb/{i}#{j}", "section": f"kb/{i}#{j}", "title": topic.title(), "heading": f"Part {j}",
                 "text": f"Facts about {topic}, part {j}: signs, causes and treatment.", "source": f"{i}.md"}
                for i, topic in enumerate(TOPICS) for j in (1, 2)]
    (root / "data").mkdir()
    (root / "data/passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    params = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    params["model"]["base"] = "models/base"
    params["encode"].update(max_seq_length=32, precision="fp32")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "pipeline.stages.index", "base"], root)
    return root


def test_searcher_works_from_any_folder_and_after_the_project_moves(project, tmp_path, monkeypatch):
    from pipeline.serving.search import Searcher

    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)  # the model is found relative to the index, not to the current folder
    monkeypatch.chdir(tmp_path)
    searcher = Searcher(moved / "models/index_base")
    assert searcher.model_dir == (moved / "models/base").resolve()
    result = searcher.search("my puppy has parvovirus", k=3)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["mode"] == "dense"
    assert result["hits"][0]["score"] >= result["hits"][1]["score"] >= result["hits"][2]["score"]
    hybrid = searcher.search_batch(["parvovirus puppies", "kidney disease in cats"], k=4, mode="hybrid")
    assert [len(r["hits"]) for r in hybrid] == [4, 4]
    assert hybrid[0]["hits"][0]["section"].startswith("kb/0#")  # BM25's exact words carry the fused ranking
    with pytest.raises(InputError, match="k 13: must be between 1 and the index size, 12"):
        searcher.search("parvo", k=13)


def test_an_index_from_another_model_is_refused(project, tmp_path):
    from pipeline.serving.search import Searcher

    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    weights = copy / "models/base/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # retrained, not re-indexed
    with pytest.raises(InputError, match="the model changed after indexing; run `dvc repro`"):
        Searcher(copy / "models/index_base")


def test_no_good_match_follows_the_threshold_in_info_json(project, tmp_path):
    from pipeline.serving.search import Searcher

    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    info_file = copy / "models/index_base/info.json"
    info = json.loads(info_file.read_text())
    for threshold, flagged in [(2.0, True), (-2.0, False)]:
        info_file.write_text(json.dumps({**info, "no_match_threshold": threshold}))
        result = Searcher(copy / "models/index_base").search("an ear infection", k=2)
        assert result["no_good_match"] is flagged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def service(project):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", str(project / "models/index_base"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if request(url + "/health")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_service_answers_get_post_and_health(service):
    status, health = request(service + "/health")
    assert status == 200 and health["status"] == "ok" and health["passages"] == 12 and health["served"] == "base"
    status, result = request(service + "/search?q=kennel+cough+in+my+dog&k=2")
    assert status == 200 and len(result["hits"]) == 2 and {"no_good_match", "top_cosine"} <= set(result)
    body = json.dumps({"queries": ["laminitis pony", "cow milk fever"], "k": 3, "mode": "hybrid"}).encode()
    status, batch = request(service + "/search", body)
    assert status == 200 and [r["query"] for r in batch["results"]] == ["laminitis pony", "cow milk fever"]
    assert all(len(r["hits"]) == 3 and r["mode"] == "hybrid" for r in batch["results"])


@pytest.mark.parametrize("path, body, status, message", [
    ("/search?q=&k=2", None, 400, "query 0: empty"),
    ("/search?q=parvo&k=0", None, 400, "k 0: must be between 1 and the index size, 12"),
    ("/search?q=parvo&k=13", None, 400, "k 13: must be between 1"),
    ("/search?q=parvo&mode=sparse", None, 400, "mode 'sparse': one of dense, hybrid"),
    ("/search?k=2", None, 422, "q"),
    ("/search", b'{"queries": ["parvo"', 422, "JSON"),
    ("/search", json.dumps({"queries": []}).encode(), 422, "queries"),
    ("/search", json.dumps({"queries": ["parvo", "  "], "k": 2}).encode(), 400, "query 1: empty"),
])
def test_service_rejects_bad_input_and_keeps_serving(service, path, body, status, message):
    got, answer = request(service + path, body)
    assert got == status and message in json.dumps(answer)
    assert request(service + "/health")[0] == 200


@pytest.mark.parametrize("args, message", [
    (["", "--index", "{index}"], "query 0: empty"),
    (["parvo", "-k", "0", "--index", "{index}"], "k 0: must be between 1"),
    (["parvo", "--index", "{missing}"], "info.json: no index here"),
])
def test_cli_bad_input_exits_1_with_a_message(project, tmp_path, args, message):
    args = [a.format(index=project / "models/index_base", missing=tmp_path / "nothing") for a in args]
    out = run([sys.executable, "-m", "pipeline.serving.search", *args], tmp_path, check=False)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_service_refuses_to_start_without_an_index(tmp_path):
    out = run([sys.executable, "-m", "pipeline.serving.serve", "--index", str(tmp_path / "none"), "--port", str(free_port())],
              tmp_path, check=False)
    assert out.returncode == 1 and "no index here" in out.stderr
