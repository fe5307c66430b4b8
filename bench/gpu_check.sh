#!/usr/bin/env bash
# The prepared GPU check of tuneddml: one command, under 5 minutes on one GPU machine.
#
#   bash bench/gpu_check.sh [OUTPUT.md]       (default: $OUT/gpu_check.md, else ./gpu_check.md)
#
# Runs in the repository root of a bare machine that may have no network: it installs nothing it
# does not find there. Wheels carried in .whl/ (e.g. faiss-cpu; see /work/.library/device/README.md)
# are installed into /tmp/site first. Without torch on a machine with a GPU (nvidia-smi) it tries
# the project's stack from pip into /tmp/site (torch==2.14.1 torchvision==0.29.1 timm==1.0.31)
# and says so clearly when that fails; the system's Python is never changed.
# Without a CUDA device it writes one line, "no CUDA device: skipped", and exits 0.
# The figures (bench/gpu_check.py: loader, ResNet-50 and ViT-S/16 images/s and peak memory,
# evaluation of 120k x 512 embeddings on the GPU, a 2-epoch trial, two trials sharing the GPU)
# go to OUTPUT.md as a Markdown table with the date, the GPU's name and torch's version.
# GPU_CHECK_TESTS=1 also runs the GPU tests afterwards (tests/training/test_gpu.py and the GPU one
# of tests/evaluation/test_knn_backends.py), about a minute more.
set -u
cd "$(dirname "$0")/.."
OUTFILE=${1:-${OUT:-.}/gpu_check.md}
mkdir -p "$(dirname "$OUTFILE")"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if ls .whl/*.whl > /dev/null 2>&1; then
  echo "== installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site || echo "warning: the carried wheels did not install"
fi

echo "== python: $PY"
if ! "$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; then
  if ! command -v nvidia-smi > /dev/null 2>&1; then  # no GPU either: nothing to install for
    echo "no CUDA device: skipped" | tee "$OUTFILE"
    exit 0
  fi
  echo "torch is missing: trying pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 into /tmp/site"
  if "$PY" -m pip install -q --target /tmp/site torch==2.14.1 torchvision==0.29.1 timm==1.0.31; then
    export PYTHONPATH=$PYTHONPATH:/tmp/site
  else
    echo "error: no torch in $PY, and pip could not install torch==2.14.1 (no network?); carry wheels in .whl/" | tee "$OUTFILE"
    exit 1
  fi
fi
echo "== pip freeze | grep -i torch"
"$PY" -m pip freeze 2> /dev/null | grep -i torch || echo "(pip freeze lists no torch package)"
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi: not found or failed"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device: skipped" | tee "$OUTFILE"
  exit 0
fi
echo "== packages the check uses"
"$PY" - << 'EOF'
import importlib
for name in ("timm", "faiss", "ray", "mlflow", "optuna", "PIL", "yaml", "psutil", "pyarrow"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__})")
EOF

# the phases budget themselves to ~270 s; the hard stop keeps what they wrote so far
timeout -k 5 290 "$PY" bench/gpu_check.py --out "$OUTFILE"
status=$?
if [ $status -ne 0 ]; then
  echo "gpu_check.py ended with status $status (124: stopped at 290 s); the table keeps the phases done" | tee -a "$OUTFILE"
fi
# GPU_CHECK_TESTS=1: then the project's GPU tests (about a minute more; output to OUTPUT.md too)
if [ "${GPU_CHECK_TESTS:-0}" = 1 ]; then
  echo "== GPU tests"
  timeout -k 5 240 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/training/test_gpu.py tests/evaluation/test_knn_backends.py 2>&1 | tee /tmp/gpu_tests.log
  { echo; echo '```'; echo "GPU tests: $(tail -n 1 /tmp/gpu_tests.log)"; grep -E '^(FAILED|ERROR|SKIPPED)' /tmp/gpu_tests.log; echo '```'; } >> "$OUTFILE"
fi
echo "== $OUTFILE"
cat "$OUTFILE"
exit $status
