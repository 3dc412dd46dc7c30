#!/usr/bin/env bash
# The GPU check, in one run (< 8 minutes on one datacenter GPU), from the repository root:
#
#   benchmarks/gpu_check.sh [WHEELS_DIR] [OUT_DIR]
#
# WHEELS_DIR (default wheels/) holds the wheels carried to a machine without network access:
# tensorrt (10.x, with its tensorrt_cu12_libs/bindings wheels), cuda-python, onnxruntime-gpu,
# torch (CUDA build), onnx, numpy, pytest and their dependencies. Installs them with
# `pip --no-index`, then: export the default model (random weights; CHECKPOINT=dir to use a
# trained one), build fp32 and fp16 TensorRT plans, run tests/test_gpu.py, and run
# benchmarks/gpu_check.py (equality with eager PyTorch on CUDA + latency table).
set -euo pipefail

WHEELS=${1:-wheels}
OUT=${2:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started))s] $*"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader

step "install from $WHEELS (no network)"
# onnxruntime (CPU) and onnxruntime-gpu install the same module: keep only the GPU one.
python -m pip uninstall -y -q onnxruntime >/dev/null 2>&1 || true
python -m pip install -q --no-index --find-links "$WHEELS" \
    tensorrt cuda-python onnxruntime-gpu torch onnx numpy pytest
python - <<'EOF'
import onnxruntime, tensorrt, torch
from runtime.backends.cuda import gpu_info
print("tensorrt", tensorrt.__version__, "| onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers(), "| torch", torch.__version__,
      "cuda", torch.cuda.is_available(), "|", gpu_info())
EOF

step "export, lint, build fp32 + fp16 plans, equality and latency -> $OUT"
set +e  # run both checks, report both
timeout 360 python -m benchmarks.gpu_check "$OUT" ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} \
    | tee "$OUT/gpu_check.log"
check_status=${PIPESTATUS[0]}

step "tests/test_gpu.py"
timeout 150 python -m pytest -q -rs tests/test_gpu.py
test_status=$?

step "done in $((SECONDS - started))s: gpu_check exit $check_status, test_gpu exit $test_status"
exit $((check_status || test_status))
