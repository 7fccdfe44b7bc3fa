#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (issue 6): install the carried wheels, run the GPU
# tests, run the GPU benchmark (device path against the CPU path in the same session), write
# everything under $OUT. From the repository root:
#
#   bash benchmarks/gpu_device_run.sh                # OUT defaults to ./gpu-results
#
# The machine (see docs/gpu.md): Python 3.12 with PyTorch, CuPy (CUDA 13), onnx, CPU-only
# onnxruntime, numpy/scipy/scikit-image/pyarrow/tifffile; no network. What else the pipeline needs
# travels as wheels in benchmarks/wheels/ (gitignored; fill it with the command in docs/gpu.md).
# onnxruntime-gpu does not fit the 64 MiB carry, so inference there runs on the torch runtime
# (NucleusModel runtime 'auto' picks it when onnxruntime has no CUDA provider).
#
# Knobs (environment): BENCH_SIDE (generated slide side, px; default 16384 = 0.27 Gpx),
# CPU_TILES (tiles for the CPU baseline; default 2), BENCH_TIMEOUT (s; default 300),
# FP16_DATA (a monuseg2018_train folder, to score fp16 vs fp32 AJI; skipped when unset).
# At most 8 result files come back from $OUT: run.log, gpu_tests.xml, bench/{json,md,csv}, fp16/…

set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log() { echo "== $(date -u +%H:%M:%S) $*"; }

{
  log "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nproc

  WHEELS=${WHEELS:-benchmarks/wheels}
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    log "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
  else
    log "no wheels in $WHEELS: using what is installed"
    export PYTHONPATH=$PWD
  fi
  $PY - <<'PYEOF'
import importlib
for name in ["torch", "cupy", "onnx", "onnxruntime", "numpy", "scipy", "skimage", "dask", "distributed", "zarr",
             "numcodecs", "imagecodecs", "tifffile", "pyarrow", "cucim", "dask_cuda", "rmm", "pynvml"]:
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"{name:12s} MISSING ({type(exc).__name__}: {exc})")
import onnxruntime, torch
print("onnxruntime providers:", onnxruntime.get_available_providers())
print("torch cuda:", torch.cuda.is_available(), torch.version.cuda)
from pipeline.runtime.session import choose_runtime
print("runtime auto ->", choose_runtime("auto"))
PYEOF

  log "GPU tests (pytest -m gpu)"
  timeout 240 $PY -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
    tests/test_watershed.py tests/test_gpu_kernels.py tests/test_torch_runtime.py tests/test_local_cuda.py
  echo "pytest exit: $?"

  log "benchmark: device path vs CPU path"
  timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/gpu_benchmark.py --device gpu --side "${BENCH_SIDE:-16384}" \
    --tile-px 2048 --cpu-tiles "${CPU_TILES:-2}" --out "$OUT/bench" --work /tmp/gpu-bench-work
  echo "benchmark exit: $?"

  if [ -n "${FP16_DATA:-}" ]; then
    log "fp16 vs fp32 AJI on the validation images"
    timeout 180 $PY benchmarks/gpu_fp16_aji.py --model "${FP16_MODEL:-pipeline/runtime/weights/nuclei_unet.onnx}" \
      --data "$FP16_DATA" --out "$OUT/fp16/fp16_aji.json"
    echo "fp16 exit: $?"
  fi
  log "done"
} 2>&1 | tee "$OUT/run.log"
