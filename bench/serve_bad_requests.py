"""Benchmark: the service under bad requests. Each kind of issue 24's list is sent 1,000 times; for each the script
prints the status it got, the slowest answer, and the service's resident memory before and after, with the CPU.

    python bench/serve_bad_requests.py [--index models/index] [--repeat 1000]

Needs the project's index (`dvc repro` first). A kind counts as answered well when every answer is a 4xx; the
memory is read from /proc/<pid>/status (VmRSS) once the service has answered a few good requests (its model loaded
and warm), and again after each kind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_model  # noqa: E402
from bench.serve_latency import free_port  # noqa: E402

BIG = "x" * 1_000_000
KINDS = {  # name -> (method, path, body bytes or None, headers)
    "k=0": ("GET", "/search?q=parvo&k=0", None),
    "k=10000": ("GET", "/search?q=parvo&k=10000", None),
    "empty query": ("GET", "/search?q=&k=3", None),
    "unknown parameter": ("GET", "/search?q=parvo&kk=3", None),
    "1 MB query (POST)": ("POST", "/search", json.dumps({"queries": [BIG], "k": 3}).encode()),
    "10,000 queries": ("POST", "/search", json.dumps({"queries": ["parvo"] * 10_000, "k": 3}).encode()),
    "malformed JSON": ("POST", "/search", b'{"queries": ["parvo"'),
    "invalid UTF-8": ("POST", "/search", b'{"queries": ["\xff\xfe"], "k": 2}'),
    "lone surrogate": ("POST", "/search", b'{"queries": ["\\ud800"], "k": 2}'),
    "unknown field": ("POST", "/search", json.dumps({"queries": ["parvo"], "k": 3, "top": 5}).encode()),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(port: int, method: str, path: str, body: bytes | None) -> tuple[int, float]:
    """One request on its own connection, as a client in the wild sends it; the time includes connecting."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        response.read()
    except (ConnectionResetError, BrokenPipeError):  # closed before its answer reached the client: not a 4xx
        return 0, (time.perf_counter() - start) * 1000
    finally:
        conn.close()
    return response.status, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(ROOT / "models/index"))
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args()
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: one line a request would fill a pipe and block it
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", args.index, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        for _ in range(600):
            try:
                if send(port, "GET", "/ready", None)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        for _ in range(20):  # warm: the first searches allocate what every later one reuses
            send(port, "GET", "/search?q=my+puppy+is+vomiting&k=5", None)
        print(f"machine: {cpu_model()}; {args.repeat} requests of each kind, one client")
        before = start = rss_mb(proc.pid)
        print(f"service memory after warm-up: {start:.1f} MB")
        for name, (method, path, body) in KINDS.items():
            statuses, slowest = set(), 0.0
            for _ in range(args.repeat):
                status, ms = send(port, method, path, body)
                statuses.add(status)
                slowest = max(slowest, ms)
            after = rss_mb(proc.pid)
            ok = all(400 <= s < 500 for s in statuses)
            print(f"  {name:20s} status {sorted(statuses)} {'(4xx)' if ok else '(NOT all 4xx)'}  slowest {slowest:6.1f} ms"
                  f"  memory {after:7.1f} MB ({after - before:+.1f})")
            before = after
        print(f"service memory after all: {before:.1f} MB ({before - start:+.1f} MB since the warm-up)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.seek(0)
        errors = [line for line in log.read().splitlines() if " ERROR " in line or "Traceback" in line]
        print(f"service log lines at ERROR or tracebacks: {len(errors)}")


if __name__ == "__main__":
    main()
