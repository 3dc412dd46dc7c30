#!/usr/bin/env bash
# The GPU check in one run (< 8 minutes on one datacenter GPU), from the repository root:
#
#   benchmarks/gpu_check.sh [WHEELS_DIR]
#
# 1. Prints what the machine has: nvidia-smi, Python, and the packages the GPU paths need
#    (torch with CUDA, tensorrt, cuda-python, onnxruntime-gpu and its providers).
# 2. Installs wheels from WHEELS_DIR if given (`pip --no-index`: machines without network).
#    TensorRT's wheels are large; without them the check runs what can run.
# 3. Runs benchmarks/gpu_check.py (train the demo preset ~1 minute or CHECKPOINT=dir, export
#    fp32 + fp16 graphs, build TensorRT plans if tensorrt imports, equality of every GPU path
#    that can start against the fp32 eager model, timings) and tests/test_gpu.py (each test
#    skips, saying why, where its stack is missing).
# Results: $OUT/gpu_check.json and $OUT/gpu_check.log when OUT is set, else a temp folder.
set -uo pipefail

WHEELS=${1:-}
RESULTS=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started))s] $*"; }

{
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
    || echo "nvidia-smi: not available"
python --version

if [ -n "$WHEELS" ]; then
    step "install from $WHEELS (no network)"
    # onnxruntime (CPU) and onnxruntime-gpu install the same module: keep only the GPU one.
    if ls "$WHEELS"/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
        python -m pip uninstall -y -q onnxruntime >/dev/null 2>&1
    fi
    python -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl \
        || echo "some wheels did not install; running what can run"
fi

step "compressive-rt (editable, no dependencies)"
# The import names live under compressive_rt (pyproject's package-dir), so PYTHONPATH=$REPO no
# longer finds them: install the checkout itself, with the setuptools already here (no network).
python -c "import compressive_rt.runtime" 2>/dev/null \
    || python -m pip install -q --no-deps --no-build-isolation -e "$REPO" \
    || echo "compressive-rt did not install; the steps below will fail to import it"

step "packages"
python - <<'EOF'
import importlib

for name in ("torch", "tensorrt", "onnxruntime", "numpy", "onnx"):
    try:
        module = importlib.import_module(name)
        print(f"{name:<12} {module.__version__}")
    except Exception as exc:  # noqa: BLE001 - report whatever stops the import
        print(f"{name:<12} not importable ({type(exc).__name__}: {exc})")
try:
    import torch
    print(f"torch CUDA   {torch.version.cuda}, available: {torch.cuda.is_available()}")
except ImportError:
    pass
try:
    import onnxruntime
    print(f"ORT providers {onnxruntime.get_available_providers()}")
except ImportError:
    pass
try:
    from compressive_rt.runtime.backends.cuda import gpu_info, import_cudart
    import_cudart()
    print(f"cuda-python  ok, {gpu_info()}")
except Exception as exc:  # noqa: BLE001
    print(f"cuda-python  not usable ({exc})")
EOF

step "benchmarks/gpu_check.py -> $RESULTS/gpu_check.json"
timeout 330 python -m compressive_rt.benchmarks.gpu_check "$WORK" --json "$RESULTS/gpu_check.json" \
    ${CHECKPOINT:+--checkpoint "$CHECKPOINT"}
check_status=$?

step "tests/test_gpu.py"
timeout 130 python -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
test_status=$?

step "done in $((SECONDS - started))s: gpu_check exit $check_status, test_gpu exit $test_status"
exit $((check_status != 0 || test_status != 0))
} 2>&1 | tee "$RESULTS/gpu_check.log"
exit "${PIPESTATUS[0]}"
