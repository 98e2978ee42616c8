"""Quick GPU check of ptqengine.gpu, small enough to run under compute-sanitizer.

    python benchmarks/gpu_smoke.py [case ...]     # default: a few cases of tests/gpu_cases.py

Prints one line per case (PASS, or FAIL with the first differing tensor and field) and exits 1
when any case fails.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_gpu import first_difference  # noqa: E402
from gpu_cases import CASES, cpu_expected, make  # noqa: E402

DEFAULT_CASES = ("many", "growth", "per_channel", "half", "specials", "relu6", "subnormal")


def run_case(name: str) -> bool:
    import cupy as cp

    from ptqengine.gpu import DeviceStatsSet

    specs, batches = make(name)
    t0 = time.perf_counter()
    stats = DeviceStatsSet(specs)
    for batch in batches:
        stats.update([None if x is None else cp.asarray(x) for x in batch])
    got = stats.to_host()
    seconds = time.perf_counter() - t0
    diff = first_difference(got, cpu_expected(specs, batches), [f"tensor {i}" for i in range(len(specs))])
    print(f"{name:<12} {'PASS' if diff is None else 'FAIL ' + diff}  ({seconds:.2f} s)", flush=True)
    return diff is None


def main() -> int:
    names = sys.argv[1:] or DEFAULT_CASES
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown cases {unknown}; known: {sorted(CASES)}")
        return 2
    ok = True
    for name in names:
        try:
            ok &= run_case(name)
        except Exception as exc:  # report every case, then fail
            print(f"{name:<12} ERROR {type(exc).__name__}: {exc}", flush=True)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
