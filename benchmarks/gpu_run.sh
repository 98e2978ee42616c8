#!/usr/bin/env bash
# The one prepared device run for ptqengine.gpu (run from the repository root on the GPU machine):
#   bash benchmarks/gpu_run.sh
# Builds the extension (with the legacy CUDA kernels, for comparison), checks the new kernels on a
# few cases, runs the GPU and statistics tests, the benchmark, and compute-sanitizer on the smoke
# cases. Every step runs even when an earlier one failed; steps stop being started once the time
# budget (PTQ_GPU_RUN_BUDGET seconds, default 285) is spent. Output: $OUT/gpu_run.log (all of it),
# $OUT/bench_gpu.json (every measured figure); a summary of step results closes the log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ptq_gpu_run}
mkdir -p "$out"
log=$out/gpu_run.log
budget=${PTQ_GPU_RUN_BUDGET:-285}
summary=()

step() {  # step NAME TIMEOUT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  if ((left < 15)); then
    echo "=== [skip] $name: time budget spent (${SECONDS}s of ${budget}s)"
    summary+=("$name: skipped (budget)")
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== [$name] (limit ${limit}s, at ${SECONDS}s) $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== [$name] rc=$rc in $((SECONDS - t0))s"
  summary+=("$name: rc=$rc $((SECONDS - t0))s")
}

{
  step env 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
    python3 --version; nvcc --version | tail -1;
    python3 -c "import cupy, numpy; print(\"cupy\", cupy.__version__, \"numpy\", numpy.__version__, \"nvrtc\", cupy.cuda.nvrtc.getVersion())";
    python3 -c "import torch; print(\"torch\", torch.__version__)" || echo "no torch"'
  step build 150 bash -c 'rm -rf build && PTQ_CUDA=ON python3 -m pip install --no-deps --no-build-isolation -q . 2>&1 | grep -v "^WARNING" ; 
    python3 -c "from ptqengine import _core; print(\"cuda_built\", _core.cuda_built, \"cuda_available\", _core.cuda_available())"'
  step status 90 python3 -c 'import time; t = time.perf_counter()
from ptqengine.gpu import gpu_status; gpu_status("cuda")
print(f"gpu_status ok (first NVRTC compile included) in {time.perf_counter() - t:.1f} s")
from ptqengine.gpu.kernels import LaunchConfig, load_kernels
k = load_kernels(0, LaunchConfig())
for name in ("count", "channel_extremes", "grow"):
    f = getattr(k, name)
    print(f"{name}: {f.num_regs} registers, {f.local_size_bytes} B local, {f.shared_size_bytes} B static shared")
print(f"window capacity {k.capacity} bins ({k.shared_bytes} B) per block, grid {k.max_blocks} blocks")'
  step smoke 60 python3 benchmarks/gpu_smoke.py
  # The CPU emulation, the bit-pattern proof and the nvcc build ran where the code was written.
  step tests 100 python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    -k "not emulated and not bit_pattern and not compiles_with_nvcc" tests/test_gpu_stats.py tests/test_cuda.py
  step bench 150 python3 benchmarks/bench_gpu.py --repeats 10 --json "$out/bench_gpu.json"
  step stats-tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_stats.py tests/test_properties.py
  if command -v compute-sanitizer >/dev/null; then
    step memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu_smoke.py many per_channel
    step racecheck 50 compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/gpu_smoke.py many growth
    step synccheck 45 compute-sanitizer --tool synccheck --error-exitcode 9 python3 benchmarks/gpu_smoke.py many
  fi
  echo "=== summary (${SECONDS}s)"
  printf '  %s\n' "${summary[@]}"
} 2>&1 | tee "$log"
