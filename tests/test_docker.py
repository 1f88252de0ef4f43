"""What of the Dockerfile can be checked without a Docker daemon: its health check's command against the service (it
passes on a ready service, fails where none answers), the service accepts the flags its entrypoint gives, and the
build context leaves the large folders out."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_rag import free_port, index, service  # noqa: F401 - fixtures: the tiny index and its live service

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def instruction(name: str) -> list[str]:
    """The JSON (exec) form of a Dockerfile instruction, line continuations joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    return json.loads(re.search(rf"^{name}\b[^\[]*(\[.*\])\s*$", text, re.M).group(1))


def test_health_check_passes_on_a_ready_service_and_fails_without_one(service):
    command = instruction("HEALTHCHECK")
    assert command[0] == "python" and "http://127.0.0.1:8000/ready" in command[-1]
    probe = [sys.executable, *command[1:]]
    for url, expected in [(service, 0), (f"http://127.0.0.1:{free_port()}", 1)]:
        port = url.rsplit(":", 1)[1]
        run = subprocess.run([a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in probe], capture_output=True)
        assert run.returncode == expected, run.stderr.decode()[-500:]


def test_the_service_takes_the_entrypoint_flags():
    entrypoint = instruction("ENTRYPOINT")
    assert entrypoint[:3] == ["python", "-m", "pipeline.serving.serve"]
    usage = subprocess.run([sys.executable, "-m", "pipeline.serving.serve", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert all(flag in usage for flag in entrypoint[3:] if flag.startswith("--"))
    assert (ROOT / entrypoint[entrypoint.index("--params") + 1].removeprefix("/app/")).is_file()


def test_the_build_context_is_an_allowlist_without_data_or_models():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]
    assert lines[0] == "*"  # everything out, then only what the image installs back in
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    copied = {p for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for p in line.split()[:-1]}
    assert copied <= allowed and not allowed & {"models", "data", ".venv", ".dvc", "reports"}
