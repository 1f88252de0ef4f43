#!/usr/bin/env bash
# The GPU check of issue 15, for a machine with a CUDA GPU: install, run the bundled `dvc repro` and the MedQuAD
# benchmark (bench/run_medquad.py) on the GPU, and print what the goals are about:
#   - training all-MiniLM-L6-v2 in bf16 at batch 64 (the defaults): >= 2,000 pairs/s
#   - the whole MedQuAD `dvc repro` (every stage): <= 5 minutes
# plus each encoder's passages/s (export.json), each stage's wall time and every metric.
#
#   bash bench/gpu_check.sh                 # from anywhere; runs in the repository root
#
# Settings (environment): VENV (default .venv, made if missing; it sees the machine's own packages, so a CUDA torch
# already installed is used), TORCH_INDEX_URL (where pip finds the CUDA build of torch, e.g.
# https://download.pytorch.org/whl/cu128; default PyPI, whose Linux wheels are CUDA builds), SKIP_INSTALL=1 (use the
# environment as it is), SHARED (the folder holding bench/medquad and bench/consumer_questions when it is not
# ../shared beside the checkout, e.g. a copy carried in bench/out/shared). On several GPUs train uses all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# 1. Install: torch's CUDA build of the pinned version first (requirements.txt pins the version only, and a CPU
# build of it would satisfy the pin), then the rest
torch_version=$(sed -n 's/^torch==//p' requirements.txt)
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    [ -d "$VENV" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
    . "$VENV/bin/activate"
    cuda_torch="import sys, torch; sys.exit(torch.version.cuda is None or torch.__version__.split('+')[0] != '$torch_version')"
    if ! python -c "$cuda_torch" 2>/dev/null; then
        echo "== installing torch $torch_version (CUDA build)"
        pip uninstall -q -y torch 2>/dev/null || true
        pip install -q "torch==$torch_version" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} || {
            echo "pip could not install torch $torch_version (no network? set TORCH_INDEX_URL, or install it and SKIP_INSTALL=1)"
            exit 1; }
    fi
    pip install -q -r requirements.txt || { echo "pip could not install requirements.txt (no network?)"; exit 1; }
elif [ -d "$VENV" ]; then
    . "$VENV/bin/activate"
fi

# 2. The GPU, as torch sees it: without it every figure below would be the CPU's (pick_device says so too)
python - <<'EOF'
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
if not torch.cuda.is_available():
    sys.exit("no usable CUDA GPU: nothing to check here")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# dvc and dvclive need a git repository: a bare copy of the tree gets a throw-away one
git rev-parse --git-dir >/dev/null 2>&1 || { git init -q && git add -A \
    && git -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "gpu check"; }

# 3. The bundled data: every stage forced, one at a time, timed
mkdir -p bench/out  # logs (git-ignored)
echo; echo "== bundled data: dvc repro, stage by stage"
total=0
stages=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('dvc.yaml'))['stages']))")
for stage in $stages; do
    start=$(date +%s.%N)
    log="bench/out/gpu_bundled_$stage.log"
    dvc repro -s -f "$stage" > "$log" 2>&1 || { echo "stage $stage failed:"; tail -30 "$log"; exit 1; }
    seconds=$(python -c "import time; print(round(time.time() - $start, 1))")
    total=$(python -c "print(round($total + $seconds, 1))")
    printf '%-12s %7.1f s\n' "$stage" "$seconds"
done
echo "whole dvc repro: $total s"
python - <<'EOF'
import json
t = json.load(open("reports/train/metrics.json"))
print(f"train: {t['pairs_per_second']} pairs/s, validation checks included ({t['device']}, {t['precision']}, "
      f"{t.get('processes', 1)} process(es), {t['steps']} steps, {t['train_minutes']} min)")
# the index stage reuses evaluate's vectors (encode once, issue 23), so the encoders' pace is export's measurement
e = json.load(open("models/onnx/export.json"))
print(f"encoders on {e.get('cpu')}: " + ", ".join(f"{b} {m['passages_per_second']} passages/s"
                                                  for b, m in e.get("backends", {}).items()))
EOF
dvc metrics show

# 4. MedQuAD: the whole pipeline (bench/run_medquad.py prints each stage's time and every metric)
echo; echo "== MedQuAD: python bench/run_medquad.py --name gpu"
if [ -n "${SHARED:-}" ] && [ ! -e ../shared ]; then ln -s "$(realpath "$SHARED")" ../shared; fi
if [ ! -d ../shared/bench/medquad ]; then
    echo "MedQuAD not found at ../shared/bench/medquad (set SHARED): not measured"
    exit 0
fi
python bench/run_medquad.py --name gpu 2>&1 | tee bench/out/gpu_medquad.log
python - <<'EOF'
import json, re, yaml
log = open("bench/out/gpu_medquad.log").read()
t = json.load(open("bench/out/gpu/reports/train/metrics.json"))
batch = yaml.safe_load(open("bench/out/gpu/reports/train/params.yaml"))["batch_size"]
e = json.load(open("bench/out/gpu/models/onnx/export.json"))
total = float(re.search(r"total wall time ([0-9.]+) min", log).group(1))
print("\nMedQuAD encoders: " + ", ".join(f"{b} {m['passages_per_second']} passages/s"
                                         for b, m in e.get("backends", {}).items()))
met = "met" if t["pairs_per_second"] >= 2000 else "NOT met"
print(f"goal: >= 2,000 pairs/s training, all-MiniLM-L6-v2 bf16 batch 64: {t['pairs_per_second']} pairs/s "
      f"({t['precision']}, {t.get('processes', 1)} process(es) x batch {batch}) -> {met}")
print(f"goal: whole MedQuAD dvc repro <= 5 min: {total} min -> {'met' if total <= 5 else 'NOT met'}")
EOF
