#!/usr/bin/env bash
# The GPU run: tests and benchmarks of this checkout on one NVIDIA GPU.
#
#   bash benchmarks/device.sh [--out DIR]      # on the GPU machine
#   bash benchmarks/device.sh --dry-run        # the same steps on CPU, tiny
#
# Made for a machine with one NVIDIA GPU, a Python that already has jax with
# CUDA, flax, optax, orbax-checkpoint and pytest, and no network. In order,
# each step bounded in time so that the whole run stays within 8 minutes:
#
#   1. names the device (nvidia-smi, jax.devices()); refuses to go on when
#      JAX's backend is not the GPU;
#   2. installs the checkout: pip install --no-deps --no-build-isolation -e .
#      (no build isolation: without a network pip cannot fetch setuptools);
#   3. times the selection backends at bench_step.py's sizes
#      (benchmarks/bench_selection.py);
#   4. runs the core equality, selection, dtype, sharding and export tests
#      on the GPU;
#   5. runs benchmarks/bench_step.py (its full run, through its command
#      line);
#
# and writes DIR/RESULTS-gpu.md (default DIR: benchmarks/) with the device,
# each step's status and output, and the figures; DIR/device-log.txt holds
# every step's whole output and DIR/step_ratios-gpu.png bench_step.py's
# plot. A step that fails or runs out of time is reported there, and the
# script goes on to the next; it exits 1 if any step did not succeed.
#
# --dry-run (or DRY_RUN=1) runs the same steps on the CPU with tiny sizes, a
# few tests and bench_step.py --quick (its BERT step with AdamW, NanoAdam
# and GaLore r128 only), skips the install (pip would change the
# environment it runs in) and writes into a temporary DIR unless --out says
# otherwise; tests/test_device_script.py runs it, so the script cannot rot,
# and checks bench_step.py's tables in its report. PYTHON
# names the interpreter (default: python3); CHECKOUT_REV the revision to
# name in the report (default: git describe, where there is a .git);
# BUDGET_S the seconds for all steps (default 440: with the steps' grace
# periods and the report, under 8 minutes).

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
OUT_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out)
      OUT_DIR="$2"
      shift
      ;;
    *)
      echo "usage: $0 [--dry-run] [--out DIR]" >&2
      exit 2
      ;;
  esac
  shift
done

BUDGET_S=${BUDGET_S:-440}
START=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [[ "$DRY_RUN" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  OUT_DIR=${OUT_DIR:-$(mktemp -d)}
  SELECTION_ARGS=(--quick)
  # The BERT step with AdamW, NanoAdam and GaLore r128 only (a sparse and a
  # projected method; the others run the same code, and
  # tests/test_benchmarks.py steps each one's transformation). This is the
  # test suite's one run of bench_step.py: tests/test_device_script.py
  # checks its tables.
  BENCH_ARGS=(--quick --methods nanoadam,galore128)
  # One test of each kind the GPU run has (an update against optax.adamw,
  # sharding rules, an export), the cheapest: the suite runs them all anyway.
  TEST_ARGS=(-k "test_full_density_equals_adamw and 1000 or test_sparse_buffers_split_over_the_params_axes or test_approx_backend_lowers_to_the_tpu_primitive")
  MODE="dry run: CPU, tiny sizes"
else
  OUT_DIR=${OUT_DIR:-benchmarks}
  SELECTION_ARGS=()
  BENCH_ARGS=()
  TEST_ARGS=()
  MODE="GPU run"
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/device-log.txt"
RESULTS="$OUT_DIR/RESULTS-gpu.md"
: >"$LOG"
export PYTHONUNBUFFERED=1

# Each step's time limit: its own cap, or what is left of the budget (less
# a reserve for the steps after it).
limit() {
  local cap=$1 reserve=$2
  local left=$((BUDGET_S - (SECONDS - START) - reserve))
  ((left < 10)) && left=10
  ((left < cap)) && echo "$left" || echo "$cap"
}

declare -a SUMMARY=()
FAILED=0

# run_step NAME CAP RESERVE CMD...: runs CMD under `timeout`, its output in
# $WORK/NAME.txt and the log; records its status and duration.
run_step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local seconds
  seconds=$(limit "$cap" "$reserve")
  local began=$SECONDS
  echo "== $name (limit ${seconds}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$seconds" "$@" >"$WORK/$name.txt" 2>&1
  local rc=$?
  cat "$WORK/$name.txt" >>"$LOG"
  local status="ok"
  if ((rc == 124 || rc == 137)); then
    status="timed out after ${seconds} s"
    FAILED=1
  elif ((rc != 0)); then
    status="failed (exit $rc)"
    FAILED=1
  fi
  echo "== $name: $status in $((SECONDS - began)) s" | tee -a "$LOG"
  SUMMARY+=("| $name | $status | $((SECONDS - began)) s |")
}

# 1. The device.
DEVICE_SMI="nvidia-smi: not found"
if command -v nvidia-smi >/dev/null 2>&1; then
  DEVICE_SMI=$(nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>&1 | head -n 4)
fi
DEVICE_JAX=$("$PYTHON" -c '
import jax
d = jax.devices()[0]
print(f"{jax.default_backend()} | {d.device_kind} | {len(jax.devices())} device(s) | jax {jax.__version__}")
' 2>&1 | tail -n 1)
echo "device: $DEVICE_SMI; $DEVICE_JAX" | tee -a "$LOG"
if [[ "$DRY_RUN" != 1 && "$DEVICE_JAX" != gpu* ]]; then
  echo "JAX's backend is not the GPU ($DEVICE_JAX); nothing to measure." >&2
  exit 2
fi

# 2. The install.
if [[ "$DRY_RUN" == 1 ]]; then
  echo "== install: skipped in a dry run (would run: $PYTHON -m pip install" \
    "--no-deps --no-build-isolation -e .)" | tee -a "$LOG"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  SUMMARY+=("| install | skipped (dry run) | 0 s |")
else
  run_step install 120 300 "$PYTHON" -m pip install --no-deps \
    --no-build-isolation --no-index -e .
  if [[ "${SUMMARY[-1]}" != *"| ok |"* ]]; then
    echo "install failed: importing the checkout through PYTHONPATH" |
      tee -a "$LOG"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
IMPORTED=$(cd /tmp && "$PYTHON" -c \
  'import nanoadam_jax; print(nanoadam_jax.__file__)' 2>&1 | tail -n 1)
echo "nanoadam_jax from: $IMPORTED" | tee -a "$LOG"
if [[ "$IMPORTED" != "$REPO"/* ]]; then
  echo "nanoadam_jax does not come from this checkout ($IMPORTED)" >&2
  exit 2
fi

# 3. The selection backends.
run_step selection 120 240 "$PYTHON" benchmarks/bench_selection.py \
  "${SELECTION_ARGS[@]}" --out "$WORK/selection.md"

# 4. The tests, on the GPU (the sharded checks' subprocesses use 8 CPU
# devices, as everywhere). With pytest-xdist, four workers share the GPU
# (compiling, on the CPU, is what takes their time), each allocating only
# what it uses.
# The dry run's few tests run in one process: workers would cost more than
# they save, inside a suite that has its own.
TEST_ENV=()
if [[ "$DRY_RUN" != 1 ]] && "$PYTHON" -c 'import xdist' >/dev/null 2>&1; then
  TEST_ARGS+=(-n 4)
  TEST_ENV+=(XLA_PYTHON_CLIENT_PREALLOCATE=false)
fi
run_step tests 180 120 env "${TEST_ENV[@]}" "$PYTHON" -m pytest -q \
  -p no:cacheprovider -rfE \
  tests/test_nanoadam.py tests/test_selection.py tests/test_sparse_leaf.py \
  tests/test_moment_dtypes.py tests/test_sharding.py tests/test_export.py \
  "${TEST_ARGS[@]}"

# 5. bench_step.py, with whatever time is left.
run_step bench_step 100000 5 "$PYTHON" benchmarks/bench_step.py \
  "${BENCH_ARGS[@]}" --out "$WORK/bench"

# The report.
{
  echo "# NanoAdam on a GPU: tests and benchmarks"
  echo
  echo "Written by \`benchmarks/device.sh\` ($MODE) on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "Device (nvidia-smi): $DEVICE_SMI."
  echo "JAX: $DEVICE_JAX. Python: $("$PYTHON" --version 2>&1)."
  echo "Checkout: ${CHECKOUT_REV:-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'not a git checkout')}."
  echo
  echo "| step | status | time |"
  echo "|---|---|---:|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo "## Selection backends"
  echo
  if [[ -s "$WORK/selection.md" ]]; then
    cat "$WORK/selection.md"
  else
    echo '```'
    tail -n 30 "$WORK/selection.txt" 2>/dev/null
    echo '```'
  fi
  echo
  echo "## Tests"
  echo
  echo '```'
  grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|errors?)" \
    "$WORK/tests.txt" 2>/dev/null |
    tail -n 40
  echo '```'
  echo
  echo "## bench_step.py"
  echo
  if [[ -s "$WORK/bench/RESULTS.md" ]]; then
    # Its own report, one heading level down, its plot renamed beside ours.
    sed -e 's/^#/##/' -e 's/(step_ratios.png)/(step_ratios-gpu.png)/' \
      "$WORK/bench/RESULTS.md"
  else
    echo "No RESULTS.md was written; the end of its output:"
    echo
    echo '```'
    tail -n 40 "$WORK/bench_step.txt" 2>/dev/null
    echo '```'
  fi
} >"$RESULTS"
if [[ -f "$WORK/bench/step_ratios.png" ]]; then
  cp "$WORK/bench/step_ratios.png" "$OUT_DIR/step_ratios-gpu.png"
fi
echo "wrote $RESULTS ($((SECONDS - START)) s)" | tee -a "$LOG"
exit "$FAILED"
