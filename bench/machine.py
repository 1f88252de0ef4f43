"""The machine a benchmark ran on, printed beside every absolute figure: our CPUs differ by 2.4x on the same run."""

from __future__ import annotations

import os

from pipeline.serving.backend_choice import host_cpu as cpu_name  # one reader of /proc/cpuinfo: the one export.json uses


def cpu_model() -> str:
    """The CPU (pipeline.serving.backend_choice.host_cpu) and the cores this process may use, e.g.
    "AMD EPYC (family 25 model 1; avx2), 2 cores"."""
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores"
