#!/usr/bin/env bash
# One prepared device run: build with the CUDA kernels, run the core and CUDA tests, then the
# GPU-vs-CPU benchmark. Output lands in $OUT/gpu_check.log when $OUT is set.
set -uo pipefail
log=${OUT:-/tmp}/gpu_check.log
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 --version; nvcc --version | tail -1
  rm -rf build pyengine/_core*.so
  time PTQ_CUDA=ON python3 -m pip install -e . --no-deps --no-build-isolation -q 2>&1 | grep -v WARNING
  python3 -c "from ptqengine import _core; print('cuda_built', _core.cuda_built, 'cuda_available', _core.cuda_available())"
  python3 -m pytest tests/test_cuda.py tests/test_stats.py tests/test_properties.py -q -p no:cacheprovider -W ignore
  python3 benchmarks/bench_cuda.py --mb 512
} 2>&1 | tee "$log"
