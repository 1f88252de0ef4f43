"""Benchmark: search latency and index build, on the bundled knowledge base and on large corpora made at run time.

    python bench/serve_latency.py                           # bundled index + 100,000 passages, every backend
    python bench/serve_latency.py --backends onnx --sizes   # one backend, the bundled index only
    python bench/serve_latency.py --sizes 100000 1000000    # and a million (issue 15's scale)
    python bench/serve_latency.py --encode 100000           # encode every passage of the large corpus for real
    python bench/serve_latency.py --sizes 1000000 --approximate-above 500000   # IVF instead of exact search

Needs the project's index (`dvc repro` first). For each corpus it prints:
- build: encoding rate (passages/s) and the FAISS build time, the index's memory;
- search in the process (Searcher, model loaded): p50 / p99 ms for single queries and for batches of 32;
- search through the service (`python -m pipeline.serving.serve` on loopback), per backend (torch, onnx,
  onnx-int8): a bounded load test, a fixed number of requests from 1, 4 and 16 client threads, each sending its
  next request when its last is answered: p50 / p95 ms per request and requests/s (issue 24's target on 2 cores:
  16 clients >= 150 requests/s at p95 <= 100 ms with the default backend). The clients run in this process, on the
  same cores as the service, as a co-located application would;
- the command line, `python -m pipeline.serving.search` including its model load, once per corpus (bundled only).
The large corpus is MedQuAD's answers (../shared/bench/medquad) cut into 64-word windows every 32 words and
repeated until it holds N passages; `--encode` of them are encoded by the served model, and beyond that the
vectors are those ones again with a little noise (renormalised): search time depends on the number of vectors,
not on their text, and encoding a million passages on 2 cores would take about an hour. Queries are the real
consumer_questions (or the bundled pet_owners questions when ../shared is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_model  # noqa: E402
from pipeline.data.readers import read_records  # noqa: E402
from pipeline.params import load_params, setup_logging  # noqa: E402
from pipeline.retrieval import encode  # noqa: E402
from pipeline.serving.index_files import build_index  # noqa: E402
from pipeline.serving.search import Searcher  # noqa: E402

SHARED = ROOT.parent / "shared" / "bench"
OUT = ROOT / "bench" / "out" / "latency"


def percentiles(ms: list[float], high: int = 99) -> str:
    return f"p50 {np.percentile(ms, 50):6.1f} ms  p{high} {np.percentile(ms, high):6.1f} ms  (n={len(ms)})"


def questions() -> list[str]:
    if (SHARED / "consumer_questions").is_dir():
        print(f"queries: {SHARED / 'consumer_questions'} (real users' questions)")
        path = SHARED / "consumer_questions" / "queries.jsonl"
    else:
        print(f"queries: {SHARED} not found; the bundled pet_owners questions")
        path = ROOT / "data/raw/testsets/pet_owners/queries.jsonl"
    return list(read_records(path, {"text": "text"})["text"])


def in_process(searcher: Searcher, queries: list[str], rounds: int) -> None:
    searcher.search_batch(queries[:32], k=10)  # warm-up
    single = []
    for q in (queries * 10)[:rounds]:
        start = time.perf_counter()
        searcher.search(q, k=10)
        single.append((time.perf_counter() - start) * 1000)
    batches = []
    for i in range(max(1, rounds // 32)):
        batch = [queries[(i * 32 + j) % len(queries)] for j in range(32)]
        start = time.perf_counter()
        searcher.search_batch(batch, k=10)
        batches.append((time.perf_counter() - start) * 1000)
    print(f"  in process, one query:      {percentiles(single)}")
    print(f"  in process, batch of 32:    {percentiles(batches)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_test(url: str, queries: list[str], requests: int, clients: int, batch: int = 1) -> list[float]:
    """`requests` requests from `clients` threads, each sending the next as soon as its last is answered."""
    times, lock = [], threading.Lock()

    def client(worker: int) -> None:
        for i in range(worker, requests, clients):
            if batch == 1:
                req = urllib.request.Request(f"{url}/search?" + urllib.parse.urlencode({"q": queries[i % len(queries)], "k": 10}))
            else:
                body = json.dumps({"queries": [queries[(i * batch + j) % len(queries)] for j in range(batch)], "k": 10})
                req = urllib.request.Request(f"{url}/search", data=body.encode(), headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as response:
                response.read()
            with lock:
                times.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def through_service(index_dir: Path, queries: list[str], rounds: int, backend: str, onnx_dir: Path,
                    extra: list[str] = ()) -> None:
    """The service's latency and throughput for `backend` at 1, 4 and 16 concurrent clients."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--index", str(index_dir), "--port", str(port),
                             "--backend", backend, "--onnx-dir", str(onnx_dir), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/ready", timeout=5).read()  # 503 until the index is loaded
                break
            except OSError:
                time.sleep(0.5)
        load_test(url, queries, 20, 1)  # warm-up
        for clients in (1, 4, 16):
            start = time.perf_counter()
            times = load_test(url, queries, rounds, clients)
            rate = len(times) / (time.perf_counter() - start)
            print(f"  service {backend:9s} {clients:2d} clients: {percentiles(times, 95)}  {rate:6.1f} requests/s")
        print(f"  service {backend:9s} batch of 32: {percentiles(load_test(url, queries, max(10, rounds // 32), 1, 32), 95)}")
    finally:
        proc.terminate()
        proc.wait()


def large_corpus(n: int) -> list[str]:
    texts = list(read_records(SHARED / "medquad/faq_train.jsonl", {"text": "answer"})["text"])
    texts += list(read_records(SHARED / "medquad/test/corpus.jsonl", {"text": "text"})["text"])
    windows = []
    for t in texts:
        words = t.split()
        windows += [" ".join(words[i:i + 64]) for i in range(0, max(1, len(words) - 32), 32)]
    return [windows[i % len(windows)] for i in range(n)]


def build_large(served: Path, n: int, encode_limit: int, cfg: dict) -> Path:
    """An index folder like the index stage's, for `n` passages: real vectors for the first `encode_limit`."""
    searcher = Searcher(served)
    texts = large_corpus(n)
    real = min(n, encode_limit)
    start = time.perf_counter()
    vectors = encode(searcher.model, texts[:real], 64, searcher.info["precision"]).cpu().numpy()
    seconds = time.perf_counter() - start
    rate = real / seconds
    if real < n:
        rng = np.random.default_rng(0)
        extra = vectors[np.arange(real, n) % real] + rng.normal(0, 0.02, (n - real, vectors.shape[1])).astype("float32")
        vectors = np.vstack([vectors, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    questions_vectors = encode(searcher.model, questions(), 64, searcher.info["precision"]).cpu().numpy()
    start = time.perf_counter()
    index, kind = build_index(vectors, cfg, questions_vectors)  # IVF recall measured on real questions
    faiss_seconds = time.perf_counter() - start
    import faiss

    folder = OUT / f"index_{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    faiss.write_index(index, str(folder / "dense.faiss"))
    with open(folder / "passages.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "section": f"p{i}", "title": "", "heading": "", "text": t,
                                "source": "medquad"}) + "\n")
    info = dict(searcher.info, passages=n, index=kind, version={"id": f"bench{n}", "built": None, "passages": n})
    info["model"] = dict(info["model"], path=os.path.relpath(searcher.model_dir, folder))
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    shutil.copytree(served / "bm25", folder / "bm25")  # the hybrid is not benchmarked here; dense only
    print(f"  build: encoded {real:,} passages at {rate:,.0f} passages/s ({searcher.info['precision']}); "
          f"{n:,} would take {n / rate / 60:.1f} min; FAISS {kind['kind']} build {faiss_seconds:.1f} s, "
          f"{faiss.serialize_index(index).nbytes / 2**20:,.0f} MiB" +
          (f", recall@10 vs exact {kind['recall@10_vs_exact']}" if "recall@10_vs_exact" in kind else ""))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=str(ROOT / "models/index"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--encode", type=int, default=10_000, help="passages of the large corpus encoded for real")
    parser.add_argument("--rounds", type=int, default=300, help="requests per latency measurement")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"],
                        choices=["torch", "onnx", "onnx-int8"],
                        help="the query encoders measured (PyTorch, the default, and the export stage's ONNX)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the service's --threads (default: the cores it may use)")
    parser.add_argument("--approximate-above", type=int, default=None,
                        help="override index.approximate_above (e.g. 500000: an IVF index at a million)")
    args = parser.parse_args()
    setup_logging()
    served = Path(args.index)
    queries = questions()
    extra = ["--threads", str(args.threads)] if args.threads else []
    print(f"machine: {cpu_model()}; torch threads {__import__('torch').get_num_threads()}")

    print(f"\nbundled knowledge base ({served})")
    for backend in ("torch", "onnx", "onnx-int8"):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pipeline.serving.search", queries[0], "-k", "3", "--index", str(served),
                              "--backend", backend], cwd=ROOT, capture_output=True, text=True)
        print(f"  command line, {backend}, with model load: {time.perf_counter() - start:.2f} s (exit {out.returncode})")
    onnx_dir = served.parent / "onnx"
    for backend in args.backends:
        searcher = Searcher(served, backend, onnx_dir)
        print(f"  {searcher.index.ntotal} passages, {searcher.info['index']['kind']} search, {backend}")
        in_process(searcher, queries, args.rounds)
        del searcher
        through_service(served, queries, args.rounds, backend, onnx_dir, extra)

    if not SHARED.is_dir():
        print(f"\n{SHARED} not found: no large corpus (MedQuAD) to build")
        return
    cfg = load_params("index", ROOT / "params.yaml")
    if args.approximate_above is not None:
        cfg["approximate_above"] = args.approximate_above
    for n in args.sizes:
        print(f"\n{n:,} passages (MedQuAD answers windowed and repeated)")
        folder = build_large(served, n, args.encode, cfg)
        for backend in args.backends:
            through_service(folder, queries, args.rounds, backend, onnx_dir, extra)


if __name__ == "__main__":
    main()
