"""`--backend auto` (issue 23 item 3): the fastest backend whose NDCG@10 nowhere falls below PyTorch's by more than
the allowed loss, by the export's measurements; PyTorch whenever there is nothing trustworthy to choose by."""

from __future__ import annotations

import json

import pytest

from pipeline.serving.backend_choice import choose_backend, host_cpu

SHA = "ab" * 32


def export(folder, torch=50.0, onnx=60.0, int8=150.0, int8_change=-0.0054, sha=SHA, **extra):
    folder.mkdir(exist_ok=True)
    backends = {"torch": {"passages_per_second": torch},
                "onnx": {"passages_per_second": onnx, "ndcg_change_vs_torch": {"test": 0.0, "pet_owners": 0.0}},
                "onnx-int8": {"passages_per_second": int8,
                              "ndcg_change_vs_torch": {"test": 0.001, "pet_owners": int8_change}}}
    (folder / "export.json").write_text(json.dumps({"sha256": sha, "cpu": host_cpu(), "backends": backends, **extra}))
    return folder


@pytest.mark.parametrize("speeds, loss, chosen", [
    ({"torch": 50.0, "onnx": 60.0}, 0.0, "onnx"),        # faster, same scores
    ({"torch": 50.0, "onnx": 34.0}, 0.0, "torch"),       # slower here (issue 23's Intel Xeon): never served by auto
    ({"torch": 50.0, "onnx": 50.0}, 0.0, "torch"),       # a tie stays with PyTorch
    ({"torch": 50.0, "onnx": 60.0}, 0.01, "onnx-int8"),  # its loss of 0.0054 allowed: the fastest
    ({"torch": 50.0, "onnx": 60.0}, 0.005, "onnx"),      # just over the allowed loss: the one set that loses decides
])
def test_the_fastest_within_the_allowed_loss(tmp_path, speeds, loss, chosen):
    folder = export(tmp_path / "onnx", **speeds)
    backend, why = choose_backend(folder, SHA, loss)
    assert backend == why["chosen"] == chosen
    assert why["passages_per_second"]["onnx-int8"] == 150.0 and why["cpu"] == host_cpu()
    assert ("not onnx-int8 (NDCG@10 -0.0054)" in why["why"]) == (loss < 0.0054)


def test_pytorch_when_there_is_nothing_to_choose_by(tmp_path, caplog):
    assert choose_backend(tmp_path / "none", SHA)[0] == "torch"  # no export
    assert choose_backend(export(tmp_path / "other", sha="cd" * 32), SHA)[0] == "torch"  # another model's export
    older = tmp_path / "older"
    older.mkdir()
    (older / "export.json").write_text(json.dumps({"sha256": SHA}))  # before exports carried their speeds
    backend, why = choose_backend(older, SHA)
    assert backend == "torch" and "no speed figures" in why["why"]
    elsewhere = export(tmp_path / "elsewhere")
    data = json.loads((elsewhere / "export.json").read_text())
    (elsewhere / "export.json").write_text(json.dumps({**data, "cpu": "Another CPU 9000"}))
    with caplog.at_level("WARNING", logger="pipeline.serve"):
        assert choose_backend(elsewhere, SHA)[0] == "onnx"  # still the figures it has, with a warning
    assert "measured on Another CPU 9000" in caplog.text


def test_the_host_cpu_names_what_sets_the_pace_beyond_a_shared_model_name():
    """Two hosts that both say "AMD EPYC" but train 2x apart: the record tells them apart by family, model and the
    vector units the encoders use, and a host that gives no flags still gets its name."""
    zen3 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2\n"
    zen4 = zen3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2", "avx2 avx512f avx512_bf16")
    assert host_cpu(zen3) == "AMD EPYC (family 25 model 1; avx2)"
    assert host_cpu(zen4) == "AMD EPYC (family 25 model 17; avx2 avx512f avx512_bf16)"
    assert host_cpu(zen3 + "processor\t: 1\nmodel name\t: other\n") == host_cpu(zen3)  # the first block only
    assert host_cpu("model name\t: Some CPU\n") == "Some CPU (no avx2)"
