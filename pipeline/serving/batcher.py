"""How the service uses the CPU: threads sized once for the process, and micro-batching of concurrent requests.

Threads: one process, one pool per library, sized from the cores the process may run on (os.sched_getaffinity:
a container's or taskset's share, not the host's count): PyTorch's intra-op threads, ONNX Runtime's session
intra-op threads and FAISS's OpenMP threads. Only the batcher's thread encodes and searches, so those pools never
run two at a time; left to themselves, each request's thread ran its own pools, and on 2 cores 16 clients got
40 requests/s with PyTorch, where one thread per library (OMP_NUM_THREADS=1) ran a request about 9x faster.

Micro-batching: requests that arrive within serve.batch_wait_ms of the first waiting one (and while a batch is being
searched) are searched together, up to serve.max_batch_queries queries: one forward pass of the encoder and one
FAISS search per mode, at the largest k asked, then each request gets its own top k (the top k of a top k' >= k is
the same list: ties are broken by passage id). Every request of a batch is answered by the same index version.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from pipeline.params import InputError

log = logging.getLogger("pipeline.serve")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_cores(threads: int | None = None) -> int:
    """Size FAISS's thread pool to the cores this process may use (or `threads`), once; returns that number, which
    ONNX Runtime's sessions take when they are made and PyTorch's pool when it is loaded (torch_threads)."""
    import faiss

    # every core the process may use: on 2 quiet cores 16 clients got 85.9 requests/s with ONNX and 70.1 with
    # PyTorch with 2 threads, against 59.9 and 40.6 with 1 (bench/serve_latency.py --threads, AMD EPYC). On cores
    # other work keeps busy, fewer threads win (12 against 45 requests/s with 2 and 1 threads there): --threads
    cores = threads or usable_cores()
    faiss.omp_set_num_threads(cores)
    log.info("threads: %d (%s) for FAISS and the encoder", cores,
             "--threads" if threads else "the cores this process may use")
    return cores


def torch_threads(cores: int) -> None:
    """PyTorch's pools, when the backend served is PyTorch (imported then only: the ONNX backends need none)."""
    import torch

    torch.set_num_threads(cores)
    try:
        torch.set_num_interop_threads(1)  # one encode at a time: no inter-op parallelism to run
    except RuntimeError:  # already set, or PyTorch already ran parallel work in this process
        pass


@dataclass
class Job:
    queries: list[str]
    k: int
    mode: str
    future: Future = field(default_factory=Future)


class Batcher:
    """One thread that searches what the request handlers submit, in batches. `current` gives the Searcher to use
    (the service swaps it on reload); each batch takes it once."""

    def __init__(self, current: Callable, wait_ms: float, max_queries: int):
        self.current, self.wait, self.max_queries = current, wait_ms / 1000, max_queries
        self._queue: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    def submit(self, queries: list[str], k: int, mode: str) -> Future:
        """A future of the requests' results (Searcher.search_batch's), or of the InputError that refused them."""
        job = Job(queries, k, mode)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            size, deadline = len(batch[0].queries), time.monotonic() + self.wait
            while size < self.max_queries:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(job)
                size += len(job.queries)
            searcher = self.current()
            for mode in {job.mode for job in batch}:
                self._search(searcher, [job for job in batch if job.mode == mode], mode)

    def _search(self, searcher, jobs: list[Job], mode: str) -> None:
        try:
            results = searcher.search_batch([q for job in jobs for q in job.queries], max(j.k for j in jobs), mode)
        except InputError as error:  # one request's (a k over a newly loaded, smaller index): each on its own
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
            for job in jobs if len(jobs) > 1 else []:
                self._search(searcher, [job], mode)
            return
        except Exception as error:  # noqa: BLE001 - handed to the requests' handlers, which answer 500
            for job in jobs:
                job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            mine = results[start:start + len(job.queries)]
            start += len(job.queries)
            job.future.set_result([{**r, "hits": r["hits"][:job.k]} for r in mine])
