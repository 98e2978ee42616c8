"""GPU vs CPU statistics throughput, side by side in one run (needs a CUDA build, a GPU and CuPy).

    python benchmarks/bench_cuda.py [--mb 512]

Prints GB/s of float32 folded into TensorStats from a CuPy array (data stays on the GPU) and from
the same values on the host with every CPU core, the ratio, and whether the two give identical bytes.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ptqengine import TensorStats, _core


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512, help="size of each test array in MB")
    args = parser.parse_args()
    if not _core.cuda_available():
        print("no CUDA device (or a build without CUDA): nothing to compare")
        return
    import cupy as cp

    n = args.mb * 1024 * 1024 // 4
    rng = np.random.default_rng(0)
    cases = {
        "gauss": rng.standard_normal(n, dtype=np.float32),
        "relu (50% zeros)": np.maximum(rng.standard_normal(n, dtype=np.float32), 0),
    }
    threads = os.cpu_count() or 1
    print(f"{'data':<18} {'GPU GB/s':>9} {'CPU GB/s':>9} {'GPU/CPU':>8}  identical   (CPU: {threads} threads)")
    for name, host in cases.items():
        device = cp.asarray(host)
        TensorStats().update(device)  # warm-up: context, kernels, scratch
        gpu_s = best_of(lambda: (TensorStats().update(device), cp.cuda.Device().synchronize()))
        cpu_s = best_of(lambda: TensorStats().update(host, threads=threads), repeats=3)
        same = TensorStats().update(device) == TensorStats().update(host)
        print(f"{name:<18} {host.nbytes / gpu_s / 1e9:9.1f} {host.nbytes / cpu_s / 1e9:9.1f} "
              f"{cpu_s / gpu_s:8.1f}  {same}")


if __name__ == "__main__":
    main()
