"""The index as a RAG application uses it: the library from another folder, the model identity check, the service
on loopback, and clear errors for bad input from both the service (4xx naming the field and the limit, nothing
logged above INFO) and the command (exit 1)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.params import InputError
from tests.conftest import SERVED_TOPICS, run, served_project

TOPICS = SERVED_TOPICS


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model) -> Path:
    """A project folder holding its base model and a built index (`python -m pipeline.stages.index base`), with
    small limits in its params.yaml's serve: section, read by the service."""
    return served_project(tmp_path_factory.mktemp("served") / "project", tiny_model,
                          {"max_k": 50, "max_queries": 8, "max_query_chars": 400, "max_body_bytes": 8192})


def test_searcher_works_from_any_folder_and_after_the_project_moves(project, tmp_path, monkeypatch):
    from pipeline.serving.search import Searcher

    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)  # the model is found relative to the index, not to the current folder
    monkeypatch.chdir(tmp_path)
    searcher = Searcher(moved / "models/index_base")
    assert searcher.model_dir == (moved / "models/index_base/model").resolve()  # the index's own copy
    result = searcher.search("my puppy has parvovirus", k=3)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["mode"] == "dense"
    assert result["hits"][0]["score"] >= result["hits"][1]["score"] >= result["hits"][2]["score"]
    assert all(h["cosine"] == h["score"] for h in result["hits"]) and result["version"] == searcher.version["id"]
    hybrid = searcher.search_batch(["parvovirus puppies", "kidney disease in cats"], k=4, mode="hybrid")
    assert [len(r["hits"]) for r in hybrid] == [4, 4]
    assert hybrid[0]["hits"][0]["section"].startswith("kb/0#")  # BM25's exact words carry the fused ranking
    with pytest.raises(InputError, match="k 13: must be between 1 and the index size, 12"):
        searcher.search("parvo", k=13)


def test_an_index_from_another_model_is_refused(project, tmp_path):
    from pipeline.serving.search import Searcher

    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    weights = copy / "models/index_base/model/model.safetensors"
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


def request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    headers = headers or ({"Content-Type": "application/json"} if body is not None else {})
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_service(index: Path, log: Path, *args: str) -> tuple[str, subprocess.Popen]:
    """The service on a free loopback port, its log in `log`; returned once /ready says an index is loaded."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", str(index), "--port", str(port),
                             *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if request(url + "/ready")[0] == 200:
                return url, proc
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
    proc.kill()
    raise AssertionError(f"not ready in 120 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def service_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service") / "serve.log"


@pytest.fixture(scope="module")
def service(project, service_log):
    url, proc = start_service(project / "models/index_base", service_log)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_service_answers_get_post_health_and_ready(service):
    status, health = request(service + "/health")
    assert status == 200 and health["status"] == "ok" and health["passages"] == 12 and health["served"] == "base"
    # --backend auto, the default: no export beside this index, so PyTorch, and the service says why
    assert health["backend"] == health["backend_choice"]["chosen"] == "torch"
    assert "no ONNX export" in health["backend_choice"]["why"]
    version = health["version"]
    assert version["passages"] == 12 and len(version["id"]) == 12 and version["built"]
    assert request(service + "/ready") == (200, health)
    status, result = request(service + "/search?q=kennel+cough+in+my+dog&k=2")
    assert status == 200 and len(result["hits"]) == 2 and {"no_good_match", "top_cosine"} <= set(result)
    assert result["version"] == version["id"] and result["truncated"] is False
    body = json.dumps({"queries": ["laminitis pony", "cow milk fever"], "k": 3, "mode": "hybrid"}).encode()
    status, batch = request(service + "/search", body)
    assert status == 200 and [r["query"] for r in batch["results"]] == ["laminitis pony", "cow milk fever"]
    assert all(len(r["hits"]) == 3 and r["mode"] == "hybrid" for r in batch["results"])
    assert batch["version"] == version["id"]
    for hit in batch["results"][0]["hits"]:  # hybrid: the fusion score ranks, the cosine is there to threshold on
        assert 0 < hit["score"] < 0.05 and -1 <= hit["cosine"] <= 1


def test_a_query_longer_than_the_model_reads_is_cut_and_said(service):
    long = " ".join(["parvovirus"] * 30)  # 30 words, 329 characters: over the 32 tokens the project's encode.max_seq_length gives
    status, result = request(service + "/search?" + urllib.parse.urlencode({"q": long, "k": 1}))
    assert status == 200 and result["truncated"] is True


BIG = json.dumps({"queries": ["a" * 10_000]}).encode()


@pytest.mark.parametrize("path, body, status, message", [
    ("/search?q=+&k=2", None, 400, "query 0: empty"),
    ("/search?q=parvo&k=0", None, 422, '"field": "query.k", "error": "Input should be greater than or equal to 1"'),
    ("/search?q=parvo&k=13", None, 400, "k 13: must be between 1 and the index size, 12"),
    ("/search?q=parvo&k=10000", None, 422, '"limit": {"le": 50}'),  # serve.max_k of the project's params.yaml
    ("/search?q=parvo&mode=sparse", None, 422, "Input should be 'dense' or 'hybrid'"),
    ("/search?q=parvo&kk=2", None, 422, '"field": "query.kk", "error": "Extra inputs are not permitted"'),
    ("/search?q=", None, 422, '"field": "query.q", "error": "String should have at least 1 character"'),
    ("/search?q=" + "a" * 401, None, 422, '"limit": {"max_length": 400}'),
    ("/search?k=2", None, 422, '"field": "query.q", "error": "Field required"'),
    ("/search", b'{"queries": ["parvo"', 422, "malformed JSON"),
    ("/search", b'{"queries": ["\xff parvo"]}', 422, "not valid UTF-8 at byte 14"),
    ("/search", b'{"queries": ["parvo \\ud800"]}', 422, '"field": "body.queries.0"'),
    ("/search", json.dumps({"queries": []}).encode(), 422, '"limit": {"field_type": "List", "min_length": 1'),
    ("/search", json.dumps({"queries": ["parvo"] * 10_000}).encode(), 413, "serve.max_body_bytes = 8192"),
    ("/search", json.dumps({"queries": ["parvo"] * 9}).encode(), 422, '"max_length": 8, "actual_length": 9'),
    ("/search", json.dumps({"queries": ["parvo"], "top": 3}).encode(), 422, '"field": "body.top"'),
    ("/search", json.dumps({"queries": ["parvo", "  "], "k": 2}).encode(), 400, "query 1: empty"),
    ("/search", BIG, 413, f"{len(BIG)} bytes: the body is limited to serve.max_body_bytes = 8192"),
])
def test_service_rejects_bad_input_and_keeps_serving(service, path, body, status, message):
    got, answer = request(service + path, body)
    assert got == status and message in json.dumps(answer)
    assert "a" * 100 not in json.dumps(answer)  # the input is not echoed back
    assert request(service + "/health")[0] == 200


def test_a_body_without_content_length_is_read_only_up_to_the_limit(service):
    def chunks():
        for _ in range(100):  # 100 KB announced by no header: cut off after 8 KB
            yield b"x" * 1024

    req = urllib.request.Request(service + "/search", data=chunks(), method="POST",
                                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(req, timeout=30)
    assert error.value.code == 413 and "max_body_bytes = 8192" in error.value.read().decode()


def test_each_request_is_one_info_line_and_bad_input_logs_no_error(service, service_log):
    request(service + "/search?q=parvo&k=0")
    request(service + "/search", b"{")
    time.sleep(0.5)
    lines = service_log.read_text().splitlines()
    assert any(re.search(r"INFO request method=GET path=/search status=422 ms=\d+\.\d", line) for line in lines)
    assert any("method=POST path=/search status=422" in line for line in lines)
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line]


def test_search_json_is_strict_json(project, tmp_path):
    out = run([sys.executable, "-m", "pipeline.serving.search", "parvo", "-k", "2", "--json", "--mode", "hybrid",
               "--index", str(project / "models/index_base")], tmp_path)
    result = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert [h["rank"] for h in result["hits"]] == [1, 2] and all("cosine" in h for h in result["hits"])


def test_scores_that_are_not_numbers_become_null():
    from pipeline.serving.search import finite

    assert finite(float("nan")) is None and finite(float("-inf")) is None and finite(0.123456) == 0.1235


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
