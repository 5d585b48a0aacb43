#!/usr/bin/env bash
# The one script a lent GPU machine runs, in one call of about ten minutes: build the package with CUDA, run the
# GPU tests, run the GPU benchmarks, and leave every JSON result and log in $OUT (flat, at most 8 files).
#
#   OUT=/path/to/out benchmarks/gpu_check.sh
#   OUT=/tmp/o WHEELS=/path/to/wheels benchmarks/gpu_check.sh   # no network: install missing packages from a folder
#   DRY_RUN=1 OUT=/tmp/o benchmarks/gpu_check.sh                 # print the steps, run nothing, write the summary
#
# Environment:
#   OUT         output folder (required unless DRY_RUN=1; created). Files: gpu_check_summary.json, gpu_check.log,
#               build.log, pytest_gpu.log, kernels_cuda.json, backends_cuda.json, pipeline_cuda.json,
#               resunet_bench_cuda.json (the ones a step did not produce are missing, the summary says why).
#   WHEELS      folder of wheels: missing Python packages are installed with `pip install --no-index --find-links`.
#               Without it, missing packages are tried from the package index once, failing fast offline.
#   PYTHON      interpreter to start from (default python3). A venv with --system-site-packages is made on top of
#               it (VENV=0: use it directly), so preinstalled torch/cupy stay visible.
#   BUDGET_S    total seconds for all steps (default 540); each step also has its own cap below.
#   DRY_RUN=1   print what would run; every step is recorded as "dry-run".
#
# Every step runs whatever happened before it (no `set -e`) and records name, status (ok, failed, timeout,
# skipped, dry-run), exit code and seconds; the exit code of the script is 0 when no step failed.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-540}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-1}
WHEELS=${WHEELS:-}

if [[ -z "${OUT:-}" ]]; then
  if [[ "$DRY_RUN" == "1" ]]; then
    OUT=$(mktemp -d /tmp/gpu_check_out.XXXXXX)
  else
    echo "gpu_check.sh: set OUT to the folder for results (OUT=/path benchmarks/gpu_check.sh)" >&2
    exit 2
  fi
fi
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
STEPS_TSV="$WORK/steps.tsv"
MAIN_LOG="$OUT/gpu_check.log"
: >"$STEPS_TSV"
: >"$MAIN_LOG"
START_EPOCH=$(date +%s)
MAX_LOG_LINES=3000

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$MAIN_LOG"; }

remaining_s() { echo $((BUDGET_S - ($(date +%s) - START_EPOCH))); }

# record NAME STATUS RC SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$STEPS_TSV"; }

# run_step NAME CAP_SECONDS LOGFILE CMD...: run CMD under a timeout (the smaller of its cap and the budget left),
# its output into LOGFILE (and the main log), and record the outcome. Never exits the script.
run_step() {
  local name=$1 cap=$2 logfile=$3
  shift 3
  local left limit t0 rc status
  left=$(remaining_s)
  limit=$cap
  ((left - 15 < limit)) && limit=$((left - 15))
  if [[ "$DRY_RUN" == "1" ]]; then
    log "[dry-run] step $name (cap ${cap}s): $*"
    record "$name" "dry-run" "" 0 "$*"
    return 0
  fi
  if ((limit < 10)); then
    log "step $name skipped: budget spent (${left}s left)"
    record "$name" "skipped" "" 0 "budget spent"
    return 0
  fi
  log "step $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$logfile.full" 2>&1
  rc=$?
  tail -n "$MAX_LOG_LINES" "$logfile.full" >"$logfile"
  rm -f "$logfile.full"
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  { echo "----- $name: $status (rc $rc) -----"; tail -n 60 "$logfile"; } >>"$MAIN_LOG"
  log "step $name: $status (rc $rc, $(($(date +%s) - t0))s)"
  record "$name" "$status" "$rc" $(($(date +%s) - t0)) "$(tail -n 1 "$logfile" | cut -c1-300)"
  return 0
}

# ------------------------------------------------------------------------------------------------ the machine
GPU_NAME=unknown
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  GPU_NAME=${GPU_NAME:-unknown}
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >>"$MAIN_LOG" 2>&1
else
  log "nvidia-smi not found"
fi
CUDA_MAJOR=""
if command -v nvcc >/dev/null 2>&1; then
  CUDA_MAJOR=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -n 1)
  nvcc --version | tail -n 2 >>"$MAIN_LOG"
else
  log "nvcc not found: the CUDA build will fail"
fi
log "device: $GPU_NAME; repo $REPO; out $OUT; budget ${BUDGET_S}s; dry run $DRY_RUN"

# ------------------------------------------------------------------------------------------------ python
PY=$PYTHON
if [[ "$VENV" == "1" ]]; then
  if [[ "$DRY_RUN" == "1" ]]; then
    log "[dry-run] $PYTHON -m venv --system-site-packages $WORK/venv"
    record venv dry-run "" 0 "$PYTHON -m venv --system-site-packages $WORK/venv"
  elif "$PYTHON" -m venv --system-site-packages "$WORK/venv" >>"$MAIN_LOG" 2>&1; then
    PY="$WORK/venv/bin/python"
    export PATH="$WORK/venv/bin:$PATH"
    record venv ok 0 0 "$PY"
  else
    log "venv creation failed; using $PYTHON directly"
    record venv failed 1 0 "using $PYTHON directly"
  fi
fi

# Import name -> pip name of what the build, the tests and the benchmarks need (torch is never installed from the
# index here: it must come preinstalled or from WHEELS).
CUPY_PIP="cupy-cuda${CUDA_MAJOR:-12}x"
PACKAGES=(
  "numpy:numpy" "nibabel:nibabel" "scipy:scipy" "pytest:pytest" "cc3d:connected-components-3d"
  "pybind11:pybind11" "scikit_build_core:scikit-build-core" "tqdm:tqdm"
  "onnx:onnx" "onnxruntime:onnxruntime" "pydicom:pydicom" "cupy:$CUPY_PIP" "torch:torch"
  "hypothesis:hypothesis" "yaml:pyyaml" "PIL:pillow"
)
missing=()
for entry in "${PACKAGES[@]}"; do
  module=${entry%%:*}
  pipname=${entry#*:}
  if [[ "$DRY_RUN" == "1" ]] || ! "$PY" -c "import $module" >/dev/null 2>&1; then
    if [[ "$module" == "torch" && -z "$WHEELS" ]]; then
      [[ "$DRY_RUN" == "1" ]] || log "torch is not installed and WHEELS is unset: torch-backend steps will fail"
      continue
    fi
    missing+=("$pipname")
  fi
done
# cmake and ninja are programs: any on PATH will do.
for tool in cmake ninja; do
  if [[ "$DRY_RUN" == "1" ]] || ! command -v "$tool" >/dev/null 2>&1; then missing+=("$tool"); fi
done
if ((${#missing[@]})); then
  if [[ -n "$WHEELS" ]]; then
    run_step install 120 "$WORK/install.log" "$PY" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}"
  else
    run_step install 90 "$WORK/install.log" "$PY" -m pip install --retries 0 --timeout 5 "${missing[@]}"
  fi
else
  record install ok 0 0 "nothing missing"
fi

# ------------------------------------------------------------------------------------------------ build
export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
JOBS=$(nproc 2>/dev/null || echo 4)
build_cuda() {
  # scripts/dev_build.sh compiles _core into python/resunet_trt/; pip is the fallback when that script fails.
  if CUDA=ON PYTHON="$PY" JOBS="$JOBS" BUILD_DIR="$WORK/build" scripts/dev_build.sh; then
    return 0
  fi
  echo "dev_build.sh failed; trying pip install --no-build-isolation ."
  RESUNET_WITH_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$PY" -m pip install --no-build-isolation --no-deps -v .
}
check_core() {
  "$PY" - <<'PYEOF'
import resunet_trt
from resunet_trt import _core
print("core:", _core.__file__)
print("built_with_cuda:", _core.built_with_cuda, "devices:", _core.cuda_device_count())
resunet_trt.show_config()
raise SystemExit(0 if _core.built_with_cuda and _core.cuda_device_count() > 0 else 1)
PYEOF
}
# timeout runs programs, not shell functions: hand the functions to a child bash.
export PY JOBS WORK
export -f build_cuda check_core
run_step build 300 "$OUT/build.log" bash -c build_cuda
# When only the pip fallback built the core, the installed package must not be shadowed by the source tree.
if ! compgen -G "$REPO/python/resunet_trt/_core*.so" >/dev/null; then
  export PYTHONPATH="${PYTHONPATH#"$REPO/python"}"
  PYTHONPATH="${PYTHONPATH#:}"
  log "no _core in the source tree: using the installed package"
fi
run_step core_check 60 "$WORK/core_check.log" bash -c check_core
cat "$WORK/core_check.log" >>"$MAIN_LOG" 2>/dev/null

# ------------------------------------------------------------------------------------------------ tests
run_step pytest_gpu 150 "$OUT/pytest_gpu.log" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors tests

# ------------------------------------------------------------------------------------------------ benchmarks
# bench_script NAME FILE OUTJSON [ARGS...]: run one benchmark script with the GPU selected and JSON out, passing
# only the flags its --help shows (the scripts are written by different hands).
bench_script() {
  local name=$1 file=$2 json=$3
  shift 3
  if [[ ! -f "$file" ]]; then
    if [[ "$DRY_RUN" == "1" ]]; then
      log "[dry-run] step $name: $file is missing"
      record "$name" dry-run "" 0 "$file missing"
    else
      log "step $name skipped: $file is missing"
      record "$name" skipped "" 0 "$file missing"
    fi
    return 0
  fi
  local help args=()
  if [[ "$DRY_RUN" == "1" ]]; then
    help="--device --out"
  else
    help=$(RESUNET_BENCH_DEVICE=cuda "$PY" "$file" --help 2>/dev/null || true)
  fi
  if grep -q -- "--device" <<<"$help"; then args+=(--device cuda); fi
  if grep -q -- "--out" <<<"$help"; then
    args+=(--out "$json")
  elif grep -q -- "--json" <<<"$help"; then
    args+=(--json "$json")
  fi
  run_step "$name" "$BENCH_CAP" "$WORK/$name.log" env RESUNET_BENCH_DEVICE=cuda "$PY" "$file" "${args[@]}" "$@"
}
BENCH_CAP=120
bench_script bench_kernels benchmarks/bench_kernels.py "$OUT/kernels_cuda.json"
bench_script bench_backends benchmarks/bench_backends.py "$OUT/backends_cuda.json"
bench_script bench_pipeline benchmarks/bench_pipeline.py "$OUT/pipeline_cuda.json" --backend torch
# resunet-bench on the bundled model; without one, on an untrained network of the default configuration (the
# speed of a network does not depend on its weights; the Dice of such a run means nothing).
model_args=()
if [[ "$DRY_RUN" != "1" ]] && ! "$PY" -c "from resunet_trt.backends import default_model_path as d; d('pt')" \
  >/dev/null 2>&1; then
  if "$PY" - "$WORK/untrained.pt" >>"$MAIN_LOG" 2>&1 <<'PYEOF'; then
import sys
from resunet_trt.metadata import ModelMetadata
from resunet_trt.model import ResUNet, ResUNetConfig, save_checkpoint
config = ResUNetConfig()
save_checkpoint(sys.argv[1], ResUNet(config).eval(), ModelMetadata(model_config=config.to_dict()))
print("no bundled model: resunet-bench runs an untrained ResUNet of the default configuration")
PYEOF
    model_args=(--checkpoint "$WORK/untrained.pt")
  fi
fi
run_step resunet_bench 90 "$WORK/resunet_bench.log" "$PY" -m resunet_trt.cli.bench "${model_args[@]}" \
  --synthetic 200,512,512 --device cuda --backend torch --warmup 1 --repeats 3 --no-progress \
  --json "$OUT/resunet_bench_cuda.json"

# ------------------------------------------------------------------------------------------------ summary
# The main log gets the tail of every step's own log; the summary is written by whichever python works.
SUMMARY_PY=$PY
"$SUMMARY_PY" -c "" >/dev/null 2>&1 || SUMMARY_PY=python3
GPU_NAME="$GPU_NAME" STEPS_TSV="$STEPS_TSV" OUT="$OUT" DRY_RUN="$DRY_RUN" START_EPOCH="$START_EPOCH" \
  "$SUMMARY_PY" - <<'PYEOF' || echo '{"error": "summary could not be written"}' >"$OUT/gpu_check_summary.json"
import json, os, platform, time

steps = []
with open(os.environ["STEPS_TSV"], encoding="utf-8") as fh:
    for line in fh:
        name, status, rc, seconds, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
        steps.append({"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                      "seconds": int(seconds or 0), "note": note})
versions, build = {}, {}
if os.environ.get("DRY_RUN") != "1":  # importing every optional library takes a while; a dry run skips it
    try:
        from resunet_trt.config import build_info, versions as _versions

        versions, build = _versions(), build_info()
    except Exception as exc:  # the summary must be written whatever failed
        build = {"error": f"{type(exc).__name__}: {exc}"}
doc = {
    "device": os.environ.get("GPU_NAME", "unknown"),
    "host": platform.node(),
    "dry_run": os.environ.get("DRY_RUN") == "1",
    "seconds": int(time.time()) - int(os.environ["START_EPOCH"]),
    "steps": steps,
    "failed": [s["step"] for s in steps if s["status"] in ("failed", "timeout")],
    "files": sorted(f for f in os.listdir(os.environ["OUT"]) if f != "gpu_check_summary.json")
    + ["gpu_check_summary.json"],
    "versions": versions,
    "build": build,
}
path = os.path.join(os.environ["OUT"], "gpu_check_summary.json")
with open(path + ".tmp", "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2)
os.replace(path + ".tmp", path)
PYEOF

# Keep $OUT flat and within 8 files: anything else a tool left there goes.
find "$OUT" -mindepth 1 -maxdepth 1 ! -name '*.json' ! -name '*.log' -exec rm -rf {} + 2>/dev/null
failed=$(awk -F'\t' '$2 == "failed" || $2 == "timeout" {print $1}' "$STEPS_TSV" 2>/dev/null | tr '\n' ' ')
rm -rf "$WORK"
log "done in $(($(date +%s) - START_EPOCH))s; device $GPU_NAME; failed steps: ${failed:-none}"
[[ -z "$failed" ]]
