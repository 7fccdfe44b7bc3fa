#!/usr/bin/env bash
# The one prepared run for a lent GPU machine: install the carried wheels, import
# everything the run uses, run the GPU tests, run the GPU benchmark in phases; every result under $OUT.
#
# THE DEVICE CALL (the `run` tool, one call, from the root of a checkout of this branch):
#   command:   bash benchmarks/gpu/gpu_device_run.sh
#   carry:     ["benchmarks/gpu/wheels"]     git-ignored, so it travels only when the call names it
#   timeout_s: 600                       this script's own limits sum to 450 s (see LIMITS below)
# Fill benchmarks/gpu/wheels first, here: `bash benchmarks/gpu/gpu_device_run.sh --fetch` (pip's own index
# settings apply); it checks that the tree and the wheels together stay under the 64 MiB carry.
# The second call (fp16 AJI, no wheels; only with ≥ 5 min of device time left): docs/gpu.md.
#
# THE DRY RUN, on any CPU machine with Python 3.12 (pyenv has it here):
#   bash benchmarks/gpu/gpu_device_run.sh --dry-run
# fetches the pinned wheels (or uses those in benchmarks/gpu/wheels), checks the carry, installs the
# wheels with --no-deps into a fresh target over a Python 3.12 base that has what the device image
# has (benchmarks/gpu/gpu_device_image.txt, cached outside the tree), imports everything the device
# run imports, runs the GPU test selection and the benchmark with --device cpu on a small slide
# through the same code paths and limits, and ends with `carry_bytes=N` and `dry-run ok` (exit 0),
# or names what failed (exit 1).
#
# The machine (docs/gpu.md): Python 3.12 with PyTorch, CuPy (CUDA 13), onnx, CPU-only onnxruntime,
# numpy/scipy/scikit-image/pyarrow/tifffile/pandas, pytest; no network. Inference there runs on the
# torch runtime (runtime 'auto' picks it: onnxruntime has no CUDA provider).
# Knobs (environment): OUT (results; default ./gpu-results), BENCH_ARGS (extra benchmark
# arguments), PYTHON (the interpreter; default python3, or the dry run's 3.12 base).
# Files back from $OUT (at most 8): run.log, gpu_tests.xml, bench/gpu_benchmark.{json,md},
# bench/nvidia_smi_device_{stages,full}.csv.

set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=device
case "${1:-}" in
  --dry-run) MODE=dry-run ;;
  --fetch) MODE=fetch ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu/gpu_device_run.sh [--dry-run | --fetch]" >&2; exit 2 ;;
esac

# LIMITS (seconds): each step's outer limit; together 30 + 30 + 150 + 240 = 450 < the call's 600.
INSTALL_LIMIT=30
IMPORT_LIMIT=30
TESTS_LIMIT=150      # pytest's own per-test limit is 90 s, so a hang is reported, not the whole step lost
BENCH_LIMIT=240      # the benchmark's phase budgets (gpu_benchmark.py) fit inside it

WHEELS=benchmarks/gpu/wheels
PYVER=3.12
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*"; }
FAILED=()
fail() { echo "FAILED: $*"; FAILED+=("$*"); }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

fetch_wheels() {  # $1: python with pip
  mkdir -p "$WHEELS"
  "$1" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WHEELS" -r benchmarks/gpu/gpu_wheels.txt
}

find_python312() {  # a Python 3.12 that runs on this machine, or nothing (a pyenv shim may not)
  local candidate
  for candidate in "${PYTHON312:-}" \
      $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r) \
      "$(command -v python3.12 2>/dev/null)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
}

# ------------------------------------------------------------------------------- fetch ----
if [ "$MODE" = fetch ]; then
  fetch_wheels "${PYTHON:-python3}" || { echo "pip download failed"; exit 1; }
  python3 benchmarks/gpu/gpu_preflight.py wheels --dir "$WHEELS" && python3 benchmarks/gpu/gpu_preflight.py carry --dir "$WHEELS"
  exit $?
fi

# ---------------------------------------------------------- the interpreter and $OUT ----
if [ "$MODE" = dry-run ]; then
  OUT=${OUT:-/tmp/gpu-dry-run-out}
  SITE=$(mktemp -d /tmp/gpu-dry-run-site.XXXXXX)/site
  WORK=$(mktemp -d /tmp/gpu-dry-run-work.XXXXXX)
  BENCH_DEVICE=(--device cpu --side 2048 --tile-px 1024)
else
  OUT=${OUT:-$ROOT/gpu-results}
  SITE=/tmp/gpu-run-site
  WORK=/tmp/gpu-bench-work
  BENCH_DEVICE=(--device gpu)
fi
rm -rf "$OUT/bench" "$OUT/run.log" "$OUT/gpu_tests.xml" && mkdir -p "$OUT/bench"
rm -rf "$SITE"

{
  T_ALL=$(now)
  log "machine ($MODE)"
  uname -srm; nproc
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

  if [ "$MODE" = dry-run ]; then
    PY312=$(find_python312)
    if [ -z "$PY312" ]; then
      PY312=$(command -v python3)
      PYVER=$("$PY312" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      echo "WARNING: no Python 3.12 here (PYTHON312, python3.12, pyenv): the dry run uses Python $PYVER and its"
      echo "         wheels; the device needs the 3.12 ones, so its carry figure below is not the device's."
    fi
    log "dry-run base: $("$PY312" -V) with what the device image has (benchmarks/gpu/gpu_device_image.txt)"
    BASE_LIST=$(python3 benchmarks/gpu/gpu_preflight.py dry-run-base)
    STAMP=$(echo "$PY312 $BASE_LIST" | sha1sum | cut -c1-12)
    BASE=${DRY_RUN_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/nuclei-pipeline/gpu-dry-run-base-$PYVER-$STAMP}
    if [ ! -x "$BASE/bin/python" ] || [ ! -f "$BASE/.complete" ]; then
      T=$(now)
      # shellcheck disable=SC2086
      if rm -rf "$BASE" && "$PY312" -m venv "$BASE" \
          && "$BASE/bin/python" -m pip install -q $BASE_LIST 2> >(grep -v "^WARNING: Location" >&2); then
        touch "$BASE/.complete"; echo "built in $(since "$T") s"
      else
        echo "dry-run FAILED: building the dry-run base $BASE (pip install of the device image's packages)"
        exit 1
      fi
    fi
    echo "base: $BASE"
    PY=${PYTHON:-$BASE/bin/python}
  else
    PY=${PYTHON:-python3}
  fi
  "$PY" -V

  log "wheels ($WHEELS)"
  if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
    if [ "$MODE" = dry-run ]; then
      T=$(now); fetch_wheels "$PY" 2> >(grep -v "^WARNING: Location" >&2) || fail "pip download of benchmarks/gpu/gpu_wheels.txt"
      echo "fetched $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels in $(since "$T") s"
    else
      echo "No wheels in $WHEELS. It is git-ignored, so it reaches the device only when the call names it:"
      echo "  carry: [\"benchmarks/gpu/wheels\"]   (fill it first with: bash benchmarks/gpu/gpu_device_run.sh --fetch)"
      echo "Stopping now rather than spend device minutes on a run that cannot import zarr or dask."
      exit 1
    fi
  fi
  if CHECK=$("$PY" benchmarks/gpu/gpu_preflight.py wheels --dir "$WHEELS"); then
    echo "$CHECK" | tail -1
  else
    echo "$CHECK" | grep -v '^  '
    fail "the wheel folder does not hold exactly the pinned wheels (benchmarks/gpu/gpu_wheels.txt)"
    [ "$MODE" = device ] && exit 1
  fi
  "$PY" benchmarks/gpu/gpu_preflight.py closure --dir "$WHEELS" || fail "dependencies of the carried wheels"
  if [ "$MODE" = dry-run ]; then
    CARRY=$("$PY" benchmarks/gpu/gpu_preflight.py carry --dir "$WHEELS")
    CARRY_RC=$?
    echo "$CARRY"
    [ $CARRY_RC -eq 0 ] || fail "the carry is over 64 MiB"
    CARRY_BYTES=$(echo "$CARRY" | sed -n 's/^carry_bytes=\([0-9]*\).*/\1/p')
  fi

  log "install $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE (--no-deps, limit ${INSTALL_LIMIT} s)"
  T=$(now)
  if ! timeout "$INSTALL_LIMIT" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$SITE" "$WHEELS"/*.whl; then
    fail "installing the wheels"
    [ "$MODE" = device ] && exit 1
  fi
  INSTALL_S=$(since "$T"); echo "installed in $INSTALL_S s"
  export PYTHONPATH=$SITE:$ROOT

  log "imports (limit ${IMPORT_LIMIT} s)"
  # What the tests and the benchmark import. On the device torch and cupy must import too (and see
  # the GPU, below); the dry run has neither (no CUDA here) and reports them. Without rmm the
  # cluster starts without a pool (pipeline/cluster.py), so it is reported, not required.
  REQUIRED=numpy,scipy,skimage,pyarrow,tifffile,pandas,onnx,onnxruntime,dask,distributed,zarr,numcodecs
  REQUIRED+=,google_crc32c,pydicom,imagecodecs,dask_cuda,pynvml,pytest,pytest_timeout
  REQUIRED+=,pipeline.config,pipeline.cluster,pipeline.graph,pipeline.slide,pipeline.io.readers
  REQUIRED+=,pipeline.io.outputs.maps,pipeline.io.outputs.tables,pipeline.kernels.level_flood,pipeline.runtime,pipeline.testing
  DEVICE_ONLY=torch,cupy,cupyx.scipy.ndimage
  if [ "$MODE" = device ]; then REQUIRED+=,$DEVICE_ONLY; OPTIONAL=rmm; else OPTIONAL=$DEVICE_ONLY,rmm; fi
  T=$(now)
  if ! timeout "$IMPORT_LIMIT" "$PY" benchmarks/gpu/gpu_preflight.py imports --required "$REQUIRED" --optional "$OPTIONAL"; then
    fail "required imports"
    [ "$MODE" = device ] && exit 1
  fi
  timeout "$IMPORT_LIMIT" "$PY" - "$MODE" <<'PYEOF' || { fail "the device is not usable from Python"; [ "$MODE" = device ] && exit 1; }
import sys
import onnxruntime
from pipeline.cluster import rmm_available, visible_gpu_count
from pipeline.runtime.session import choose_runtime

runtime = choose_runtime("auto")
print("onnxruntime providers:", onnxruntime.get_available_providers())
print("runtime auto ->", runtime, "| GPUs visible:", visible_gpu_count(), "| rmm imports:", rmm_available())
if sys.argv[1] == "device":
    import cupy
    import torch

    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
    print("cupy sees", cupy.cuda.runtime.getDeviceCount(), "device(s)")
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    assert runtime in ("torch", "onnxruntime") and (runtime == "torch" or "CUDAExecutionProvider" in onnxruntime.get_available_providers())
PYEOF
  IMPORT_S=$(since "$T"); echo "imports checked in $IMPORT_S s"

  log "GPU tests: pytest -m gpu (limit ${TESTS_LIMIT} s, 90 s a test)"
  T=$(now)
  TEST_FILES=(tests/kernels/test_level_flood.py tests/kernels/test_dispatch.py tests/runtime/test_torch_onnx.py tests/test_cluster_cuda.py)
  if [ "$MODE" = dry-run ]; then
    echo "collected: $("$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider "${TEST_FILES[@]}" 2>&1 | tail -1)"
  fi
  timeout "$TESTS_LIMIT" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --timeout=90 --durations=10 \
    --junitxml "$OUT/gpu_tests.xml" "${TEST_FILES[@]}"
  RC=$?
  TESTS_S=$(since "$T"); echo "pytest exit: $RC in $TESTS_S s"
  [ $RC -eq 0 ] || fail "GPU tests (pytest exit $RC)"

  log "benchmark (limit ${BENCH_LIMIT} s; results written after each phase)"
  T=$(now)
  # shellcheck disable=SC2086
  timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu/gpu_benchmark.py "${BENCH_DEVICE[@]}" --out "$OUT/bench" --work "$WORK" \
    --watchdog-s $((BENCH_LIMIT - 10)) ${BENCH_ARGS:-}
  RC=$?
  BENCH_S=$(since "$T"); echo "benchmark exit: $RC in $BENCH_S s"
  [ $RC -eq 0 ] || fail "benchmark (exit $RC; see the phases in $OUT/bench/gpu_benchmark.md)"
  rm -rf "$WORK"

  if [ "$MODE" = dry-run ]; then
    log "the second call (fp16 AJI; carries benchmarks/gpu/fp16-data, no wheels): its imports and carry"
    PACKED=benchmarks/gpu/fp16-data/validation.npz
    # everything it imports but torch, without the wheel target: none of it may need a carried wheel
    PYTHONPATH=$ROOT "$PY" -c "
import sys
import pipeline.io.annotations, pipeline.evaluation.metrics, pipeline.kernels.nuclei, pipeline.training.targets
wheel_only = sorted(m for m in sys.modules if m.split('.')[0] in {'zarr', 'dask', 'distributed', 'numcodecs', 'imagecodecs', 'pydicom'})
assert not wheel_only, f'the fp16 call would need carried wheels for {wheel_only}'
print('imports without wheels: ok (torch: on the device image)')
" || fail "the fp16 call's imports"
    MONUSEG=$(PYTHONPATH=$ROOT "$PY" -c "from pipeline.io.annotations import data_dir as d; print(d() / 'monuseg2018_train')")
    if [ ! -f "$PACKED" ] && [ -d "$MONUSEG" ]; then
      T=$(now)
      PYTHONPATH=$ROOT "$PY" benchmarks/gpu/gpu_fp16_aji.py --pack "$PACKED" --data "$MONUSEG" \
        || fail "packing the validation images"
      echo "packed in $(since "$T") s"
    fi
    if [ -f "$PACKED" ]; then
      PYTHONPATH=$ROOT:$ROOT/benchmarks/gpu "$PY" -c "
from gpu_fp16_aji import packed_images
images = packed_images('$PACKED')
assert len(images) == 7 and all(rgb.shape[:2] == labels.shape and labels.max() > 0 for _, rgb, labels in images)
print('packed:', len(images), 'images,', sum(int(l.max()) for _, _, l in images), 'nuclei')
" || fail "reading the packed validation images"
      "$PY" benchmarks/gpu/gpu_preflight.py carry --dir benchmarks/gpu/fp16-data | sed 's/^/fp16 call: /' \
        || fail "the fp16 call's carry is over 64 MiB"
    else
      echo "no $MONUSEG here: the fp16 call's data is not packed (docs/gpu.md)"
    fi
  fi

  TOTAL_S=$(since "$T_ALL")
  log "done in $TOTAL_S s"
  ls -l "$OUT" "$OUT/bench"
  if [ "$MODE" = dry-run ]; then
    rm -rf "$(dirname "$SITE")"
    "$PY" - "$INSTALL_S" "$IMPORT_S" "$TESTS_LIMIT" "$OUT/bench/gpu_benchmark.json" <<'PYEOF'
import json, sys
install, imports, tests_limit = (float(v) for v in sys.argv[1:4])
try:
    bench = json.loads(open(sys.argv[4]).read())
except (OSError, ValueError):
    bench = {"phases": {}}
setup = bench["phases"].get("setup", {}).get("seconds", 30.0) + 10  # the device's slide is 16× larger
budgets = sum(p.get("budget_s") or 0 for p in bench["phases"].values())
# the device run: install and imports as here; the tests at most their limit (≈ 60 s expected:
# 40-odd device tests, the cluster start the longest); the benchmark's setup as here, each
# phase at most its budget plus one tile, the warm-up (kernel compilation) ≈ 30 s
expected = install + imports + 60 + setup + 30 + budgets
bound = install + imports + tests_limit + 240
print(f"estimate: the device run takes ≈ {expected / 60:.1f} min (install {install:.0f} s + imports {imports:.0f} s"
      f" + tests ≈ 60 s + benchmark ≈ {setup + 30 + budgets:.0f} s), at most {bound / 60:.1f} min by its limits;"
      " plus the machine's start (1-2 min)")
PYEOF
    echo "carry_bytes=${CARRY_BYTES:-unknown}"
  fi
  if [ ${#FAILED[@]} -eq 0 ]; then
    [ "$MODE" = dry-run ] && echo "dry-run ok"
    exit 0
  fi
  echo "$MODE FAILED: $(printf '%s; ' "${FAILED[@]}")"
  exit 1
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
