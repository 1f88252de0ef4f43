"""Benchmark: the search service under load while `dvc repro` rebuilds its index (issue 24, item 1).

    python bench/serve_reload.py [--clients 8] [--backend torch]

Copies the project (without .venv, bench/out and the DVC cache) to a temporary folder, changes every passage's
text there (a new version of the knowledge base: " [rebuilt]" appended, so an answer mixing versions shows), starts
the service on the copy's models/index, and runs `dvc repro -f -s index` in the copy while `--clients` threads
query it (dense and hybrid, GET and POST). Prints the failed requests, the versions that answered, and the answers
whose hits do not match the passages of the version they name (must be 0), with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_model  # noqa: E402
from bench.serve_latency import free_port, questions  # noqa: E402
from pipeline.serving.search import version_of  # noqa: E402


def version_texts(index: Path) -> tuple[str, dict[str, str]]:
    text = (index / "info.json").read_text(encoding="utf-8")
    with open(index / "passages.jsonl", encoding="utf-8") as f:
        texts = {p["id"]: p["text"] for p in map(json.loads, f)}
    return version_of(json.loads(text), text)["id"], texts


def call(url: str, body: bytes | None = None) -> tuple[int, list[dict]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            got = json.loads(response.read())
            return response.status, got.get("results", [got])
    except urllib.error.HTTPError as e:
        return e.code, []
    except OSError:
        return 0, []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    args = parser.parse_args()
    print(f"machine: {cpu_model()}")
    work = Path(tempfile.mkdtemp(prefix="serve_reload_"))
    project = work / "project"
    shutil.copytree(ROOT, project, symlinks=True,
                    ignore=lambda d, names: [n for n in names if (Path(d) == ROOT and n in (".venv", "shared"))
                                             or (Path(d) == ROOT / "bench" and n == "out")
                                             or (Path(d) == ROOT / ".dvc" and n in ("cache", "tmp"))])
    passages = project / "data/passages.jsonl"
    rows = [json.loads(line) for line in passages.read_text(encoding="utf-8").splitlines() if line.strip()]
    index = project / "models/index"
    before = version_texts(index)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", str(index), "--port", str(port),
                             "--backend", args.backend], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    answers, stop, qs, threads = [], threading.Event(), questions(), []

    def client(n: int) -> None:
        i = n
        while not stop.is_set():
            q, mode = qs[i % len(qs)], ("dense", "hybrid")[i % 2]
            if i % 3 == 0:
                body = json.dumps({"queries": [q, qs[(i + 1) % len(qs)]], "k": 5, "mode": mode}).encode()
                answers.append(call(f"{url}/search", body))
            else:
                answers.append(call(f"{url}/search?" + urllib.parse.urlencode({"q": q, "k": 5, "mode": mode})))
            i += args.clients

    try:
        for _ in range(600):
            if call(f"{url}/ready")[0] == 200:
                break
            time.sleep(0.5)
        threads += [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(3)
        passages.write_text("".join(json.dumps({**r, "text": r["text"] + " [rebuilt]"}, ensure_ascii=False) + "\n"
                                    for r in rows), encoding="utf-8")
        start = time.perf_counter()
        repro = subprocess.run(["dvc", "repro", "-f", "-s", "index"], cwd=project, env=env, capture_output=True,
                               text=True)
        print(f"dvc repro -f -s index: exit {repro.returncode} in {time.perf_counter() - start:.0f} s")
        if repro.returncode:
            print(repro.stdout[-2000:], repro.stderr[-2000:])
        after = version_texts(index)
        deadline = time.time() + 60
        while time.time() < deadline:
            status, got = call(f"{url}/health")
            if status == 200 and got and got[0]["version"]["id"] == after[0]:
                break
            time.sleep(0.2)
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.terminate()
        proc.wait()
        log.close()
    texts = dict([before, after])
    failed = [a for a in answers if a[0] != 200]
    served, mixed = {}, 0
    for _, results in answers:
        for r in results:
            served[r["version"]] = served.get(r["version"], 0) + 1
            known = texts.get(r["version"], {})
            mixed += any(known.get(h["id"]) != h["text"] for h in r["hits"])
    print(f"{len(answers)} requests from {args.clients} clients ({args.backend}): {len(failed)} failed "
          f"(statuses {sorted({a[0] for a in failed})}); versions {before[0]} -> {after[0]}; answers per version "
          f"{served}; answers whose hits are not their version's passages: {mixed}")
    warnings = [line for line in (work / "serve.log").read_text().splitlines() if "WARNING" in line or "ERROR" in line]
    print(f"service log: {len(warnings)} warning/error lines" + "".join(f"\n  {w}" for w in warnings[:5]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
