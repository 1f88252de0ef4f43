"""Atomic outputs: made with the umask's modes, swapped in by renames only once the whole block succeeded, and a
failure (in the block or in the swap itself) leaves every previous output where it was."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from pipeline.files import atomic_dir, atomic_file, write_json


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(parent: Path, *names: str) -> list[str]:
    """Temporaries beside the outputs (`.name.*`) that a run left behind."""
    return sorted(p.name for p in parent.iterdir() if any(p.name.startswith(f".{n}.") for n in names))


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the previous one back."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def old_outputs(root: Path) -> tuple[Path, Path, Path]:
    """A directory, a file and a second directory, each holding an "old" output."""
    (root / "index").mkdir(parents=True)
    (root / "index/vectors").write_text("old index")
    (root / "serve.json").write_text("old serve")
    (root / "plots").mkdir()
    (root / "plots/curve.csv").write_text("old plots")
    return root / "index", root / "serve.json", root / "plots"


def contents(*outputs: Path) -> dict[str, str]:
    return {str(f): f.read_text() for out in outputs for f in ([out] if out.is_file() else sorted(out.rglob("*")))
            if f.is_file()}


@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                         (0o002, 0o775, 0o664)], ids=["022", "077", "002"])
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, mask, dir_mode, file_mode):
    """mkdtemp and mkstemp make 0o700 and 0o600: models/index and reports/serve.json were unreadable to a service
    running as another user. An output now has the modes a plain mkdir or open would give it."""
    umask(mask)
    with atomic_dir(tmp_path / "models/index") as out:
        (out / "info.json").write_text("{}")
    with atomic_file(tmp_path / "reports/serve.json") as tmp:
        tmp.write_text("{}")
    write_json(tmp_path / "reports/metrics.json", {"a": 1})
    with atomic_dir(tmp_path / "models/finetuned") as out:  # a library writing through mkstemp and a rename, as
        fd, name = tempfile.mkstemp(dir=out)                # transformers saves model.safetensors: 0o600
        os.close(fd)
        os.replace(name, out / "model.safetensors")
    assert mode(tmp_path / "models/finetuned/model.safetensors") == file_mode
    assert mode(tmp_path / "models/index") == dir_mode
    assert mode(tmp_path / "models/index/info.json") == file_mode
    assert mode(tmp_path / "reports/serve.json") == file_mode
    assert mode(tmp_path / "reports/metrics.json") == file_mode


def test_a_failed_block_leaves_the_previous_output_and_no_temporaries(tmp_path):
    index, serve, _ = old_outputs(tmp_path)
    before = contents(index, serve)
    with pytest.raises(RuntimeError, match="encoding failed"), atomic_dir(index) as out:
        (out / "vectors").write_text("half an index")
        raise RuntimeError("encoding failed")
    with pytest.raises(RuntimeError, match="report failed"), atomic_file(serve) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("report failed")
    assert contents(index, serve) == before
    assert leftovers(tmp_path, "index", "serve.json") == []


def test_a_success_replaces_the_output_and_removes_the_previous_one(tmp_path):
    index, serve, _ = old_outputs(tmp_path)
    with atomic_dir(index) as out:
        (out / "dense.faiss").write_text("new index")
    with atomic_file(serve) as tmp:
        tmp.write_text("new serve")
    assert contents(index, serve) == {str(index / "dense.faiss"): "new index", str(serve): "new serve"}
    assert leftovers(tmp_path, "index", "serve.json") == []


def fail_rename_onto(monkeypatch, target: Path) -> None:
    """The first rename onto `target` of something other than its own previous copy fails (a full disk, EIO)."""
    real, failed = os.replace, []

    def replace(src, dst, **kwargs):
        if Path(dst) == target and not failed:
            failed.append(src)
            raise OSError(28, "No space left on device")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_the_previous_directory_survives_a_failed_rename_into_place(tmp_path, monkeypatch):
    """atomic_dir used to delete the previous output and then rename the new one in: when the rename failed, the
    output was gone. Now the previous one is renamed aside and, on a failure, back."""
    index, _, _ = old_outputs(tmp_path)
    before = contents(index)
    fail_rename_onto(monkeypatch, index)
    with pytest.raises(OSError, match="No space left"), atomic_dir(index) as out:
        (out / "dense.faiss").write_text("new index")
    assert contents(index) == before
    assert leftovers(tmp_path, "index") == []


def test_a_symlinked_previous_output_is_replaced_and_what_it_points_to_is_left(tmp_path):
    """DVC may check an output out as a link into its cache: the link is swapped out, never the cache emptied."""
    cache = tmp_path / "cache/ab12"
    cache.mkdir(parents=True)
    (cache / "vectors").write_text("cached index")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/index").symlink_to(cache)
    with atomic_dir(tmp_path / "models/index") as out:
        (out / "dense.faiss").write_text("new index")
    assert not (tmp_path / "models/index").is_symlink()
    assert contents(tmp_path / "models/index") == {str(tmp_path / "models/index/dense.faiss"): "new index"}
    assert (cache / "vectors").read_text() == "cached index"


def test_outputs_together_are_all_left_when_the_block_fails(tmp_path):
    """evaluate, train and prepare used to rename their outputs in one after another, each as its own block ended:
    a failure between them mixed new and old outputs. Now nothing is renamed before the whole block succeeded."""
    from pipeline.files import atomic_outputs

    outputs = old_outputs(tmp_path)
    before = contents(*outputs)
    with pytest.raises(RuntimeError, match="plots failed"), atomic_outputs(*outputs) as (index, serve, plots):
        index.mkdir()
        (index / "vectors").write_text("new index")
        write_json(serve, {"new": True})
        plots.mkdir()
        raise RuntimeError("plots failed")
    assert contents(*outputs) == before
    assert leftovers(tmp_path, "index", "serve.json", "plots") == []


def test_outputs_together_are_all_replaced_on_success(tmp_path):
    from pipeline.files import atomic_outputs

    outputs = old_outputs(tmp_path)
    new = tmp_path / "new_report.md"  # an output that did not exist before
    with atomic_outputs(*outputs, new) as (index, serve, plots, report):
        index.mkdir()
        (index / "vectors").write_text("new index")
        write_json(serve, {"new": True})
        plots.mkdir()
        report.write_text("new report")
        assert not any(p.exists() for p in (new,)) and contents(*outputs)[str(outputs[1])] == "old serve"
    assert contents(*outputs, new) == {str(tmp_path / "index/vectors"): "new index",
                                       str(tmp_path / "serve.json"): '{\n  "new": true\n}\n',
                                       str(new): "new report"}
    assert leftovers(tmp_path, "index", "serve.json", "plots", "new_report.md") == []


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_failed_swap_puts_back_the_outputs_already_swapped(tmp_path, monkeypatch, failing, hard_links):
    """The renames are the last step; when one fails, those done before it are undone: all old, never a mix."""
    from pipeline.files import atomic_outputs

    outputs = old_outputs(tmp_path)
    before = contents(*outputs)
    fail_rename_onto(monkeypatch, outputs[failing])
    if not hard_links:
        monkeypatch.setattr(os, "link", lambda *args, **kwargs: (_ for _ in ()).throw(OSError(1, "not permitted")))
    with pytest.raises(OSError, match="No space left"), atomic_outputs(*outputs) as (index, serve, plots):
        index.mkdir()
        (index / "vectors").write_text("new index")
        serve.write_text("new serve")
        plots.mkdir()
    assert contents(*outputs) == before
    assert leftovers(tmp_path, "index", "serve.json", "plots") == []


def test_an_output_the_block_did_not_make_fails_before_anything_is_swapped(tmp_path):
    from pipeline.files import atomic_outputs

    outputs = old_outputs(tmp_path)
    before = contents(*outputs)
    with pytest.raises(FileNotFoundError, match="plots"), atomic_outputs(*outputs) as (index, serve, _plots):
        index.mkdir()
        serve.write_text("new serve")
    assert contents(*outputs) == before
    assert leftovers(tmp_path, "index", "serve.json", "plots") == []


def test_a_previous_output_that_cannot_be_put_back_is_kept_and_named(tmp_path, monkeypatch):
    """Should undoing a swap fail too, the previous output stays in its staging folder, which the error names."""
    from pipeline.files import atomic_outputs

    outputs = old_outputs(tmp_path)
    fail_rename_onto(monkeypatch, outputs[2])
    real = os.replace

    def replace(src, dst, **kwargs):
        if Path(src) == outputs[0] and Path(dst).name == "index":  # the new index, back to its staging path
            raise OSError(5, "Input/output error")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left") as failure, atomic_outputs(*outputs) as (index, serve, plots):
        index.mkdir()
        (index / "vectors").write_text("new index")
        serve.write_text("new serve")
        plots.mkdir()
    [kept] = leftovers(tmp_path, "index")
    assert (tmp_path / kept / "index.old/vectors").read_text() == "old index"
    assert any(str(tmp_path / kept / "index.old") in note for note in failure.value.__notes__)
    assert contents(outputs[1])[str(outputs[1])] == "old serve"  # the others are put back
    assert leftovers(tmp_path, "serve.json", "plots") == []
