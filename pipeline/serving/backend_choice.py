"""`--backend auto`: serve with the fastest encoder that scores as PyTorch did, by the export's own measurements.

The export stage (pipeline/stages/export.py) measures, on the host that built the index and in the same run, each
backend's passages/s on a fixed sample and its NDCG@10 on every held-out set, and writes them into
models/onnx/export.json beside the graphs. `auto` reads them: of PyTorch fp32 and the ONNX backends whose NDCG@10
is nowhere lower than PyTorch's by more than `max_ndcg_loss` (0 by default: ONNX fp32 qualifies, int8 usually
loses a few thousandths and does not), it serves the fastest. So the served encoder is never slower than PyTorch
fp32 where the index was built, and never scores worse than what evaluation scored. Without an export of the
index's own model (no `dvc repro export`, or an older export), it serves PyTorch, and says why.

Measured, not guessed from the CPU's flags: on an AMD EPYC ONNX fp32 encoded 1.15x to 1.48x PyTorch's pace, on an
Intel Xeon with AMX 0.69x (issue 23), so no rule by vendor or instruction set would hold. A host other than the
one that measured is told so in the log (`export.json` "cpu"); re-run `dvc repro export` there, or pass --backend.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

log = logging.getLogger("pipeline.serve")


def host_cpu(cpuinfo: str | None = None) -> str:
    """This host's CPU, as the export stage records it beside its speeds (bench/machine.py's, for bench/): the model
    name, its family and model numbers, and the vector units that set the pace, e.g. "AMD EPYC (family 25 model 1;
    avx2)". Why more than the name: a cloud host may report only "AMD EPYC", and two such hosts of this project, one
    with AVX512-BF16 and one with AVX2 alone, ran the plain training loop on the same pairs 1.99x apart
    (bench/README.md)."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's block is enough: the cores of one host are alike
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    units = [u for u in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if u in flags] or ["no avx2"]
    family = f"family {fields['cpu family']} model {fields.get('model', '?')}; " if "cpu family" in fields else ""
    return f"{name} ({family}{' '.join(units)})"


def choose_backend(onnx_dir: Path, model_sha256: str, max_ndcg_loss: float = 0.0) -> tuple[str, dict]:
    """The backend to serve (torch, onnx or onnx-int8) and why: {"chosen", "why", "passages_per_second", "cpu"}."""
    export_file = Path(onnx_dir) / "export.json"
    if not export_file.is_file():
        return "torch", {"chosen": "torch", "why": f"no ONNX export at {onnx_dir} (`dvc repro export` makes one)"}
    export = json.loads(export_file.read_text(encoding="utf-8"))
    if export.get("sha256") != model_sha256:
        return "torch", {"chosen": "torch", "why": f"the export at {onnx_dir} is of another model than the index's"}
    measured = export.get("backends")
    if not measured or "torch" not in measured:
        return "torch", {"chosen": "torch", "why": f"the export at {onnx_dir} has no speed figures (an older export)"}
    speed = {b: m["passages_per_second"] for b, m in measured.items()}
    loss = {b: max([-change for change in m.get("ndcg_change_vs_torch", {}).values()] + [0.0])
            for b, m in measured.items()}
    eligible = [b for b in measured if loss[b] <= max_ndcg_loss + 1e-9]
    chosen = max(eligible, key=lambda b: (speed[b], b == "torch"))  # a tie stays with PyTorch
    excluded = [f"{b} (NDCG@10 -{loss[b]:.4f})" for b in measured if b not in eligible]
    why = (f"fastest of {', '.join(eligible)} on {export.get('cpu', 'an unrecorded CPU')}: "
           + ", ".join(f"{b} {speed[b]:g}" for b in eligible) + " passages/s"
           + (f"; not {', '.join(excluded)}, over the allowed loss {max_ndcg_loss:g}" if excluded else ""))
    if export.get("cpu") and export["cpu"] != host_cpu():
        log.warning("backend auto: the export's speeds were measured on %s, this host is %s; run `dvc repro export` "
                    "here for figures of this host, or pass --backend", export["cpu"], host_cpu())
    return chosen, {"chosen": chosen, "why": why, "passages_per_second": speed, "cpu": export.get("cpu")}
