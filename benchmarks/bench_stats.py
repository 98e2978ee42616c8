"""Benchmark of the native statistics core against its peers (issue 2).

(a) Histogram collection throughput, GB/s of float32 fed in: a fresh TensorStats takes a stream of
    batches whose range grows (so the grid has to grow too), with threads=1 and threads=2; beside
    numpy's np.histogram(x, bins=2048), an abs-max pass (the memory-bound floor), onnxruntime's
    HistogramCollector (the entropy collector, histogram re-binned as the range grows) and
    ModelOpt's torch HistogramCalibrator.collect.
(b) Scale-search time per tensor at 2048 bins (entropy, mse, percentile) beside onnxruntime's
    HistogramCollector entropy / percentile and ModelOpt's HistogramCalibrator.compute_amax.

Peers that are not installed are reported as "not installed". Run:

    python benchmarks/bench_stats.py            # full run, about a minute on 2 cores
    python benchmarks/bench_stats.py --quick    # smaller data, fewer repeats
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import time
from typing import Callable, Optional

import numpy as np

import ptqengine
from ptqengine.algorithms import amax_from_histogram
from ptqengine.algorithms import compute_amax

NUM_BINS = 2048
NUM_QUANTIZED_BINS = 128
PERCENTILE = 99.99


# --- data ------------------------------------------------------------------------------------
def make_values(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One realistic activation distribution, float32."""
    if kind == "gaussian":
        x = rng.standard_normal(n)
    elif kind == "relu":  # ReLU output: about half exact zeros
        x = np.maximum(rng.standard_normal(n), 0.0)
    elif kind == "laplace":  # heavy-tailed
        x = rng.laplace(0.0, 1.0, n)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def make_batches(kind: str, batches: int, per_batch: int, growth: float, seed: int) -> list[np.ndarray]:
    """Batches whose scale grows geometrically by `growth` overall, so the range keeps widening."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(batches):
        scale = growth ** (k / max(batches - 1, 1))
        out.append(make_values(kind, per_batch, rng) * np.float32(scale))
    return out


# --- timing ----------------------------------------------------------------------------------
def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` runs: the machine is shared (2 cores), the minimum is the least noisy."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@contextlib.contextmanager
def quiet():
    """onnxruntime's collector prints from library code; keep the table readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# --- optional peers --------------------------------------------------------------------------
def load_ort_collector():
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except Exception:  # noqa: BLE001  (any import failure means "not installed" here)
        return None
    return HistogramCollector


def load_modelopt():
    try:
        import torch
        from modelopt.torch.quantization.calib import HistogramCalibrator
    except Exception:  # noqa: BLE001
        return None
    torch.set_num_threads(1)
    return torch, HistogramCalibrator


def ort_entropy_collector(HistogramCollector):
    # The settings create_calibrator(CalibrationMethod.Entropy) uses, with 2048 bins as TensorRT.
    return HistogramCollector(method="entropy", symmetric=False, num_bins=NUM_BINS,
                              num_quantized_bins=NUM_QUANTIZED_BINS, percentile=PERCENTILE, scenario="same")


def ort_percentile_collector(HistogramCollector):
    # create_calibrator(CalibrationMethod.Percentile) defaults: symmetric |x| histogram, 2048 bins.
    return HistogramCollector(method="percentile", symmetric=True, num_bins=NUM_BINS,
                              num_quantized_bins=NUM_QUANTIZED_BINS, percentile=PERCENTILE, scenario="same")


# --- (a) collection throughput ---------------------------------------------------------------
def collection_rows(batches: list[np.ndarray], repeat: int, ort, mo) -> list[tuple[str, Optional[float]]]:
    nbytes = sum(b.nbytes for b in batches)

    def ours(threads: int) -> Callable[[], object]:
        def run():
            s = ptqengine.TensorStats(NUM_BINS)
            for b in batches:
                s.update(b, threads=threads)
            return s
        return run

    def np_hist():
        for b in batches:
            np.histogram(b, bins=NUM_BINS)

    def np_absmax():
        for b in batches:
            np.abs(b).max()

    rows: list[tuple[str, Optional[float]]] = [
        ("ptqengine TensorStats.update threads=1", nbytes / best_seconds(ours(1), repeat) / 1e9),
        ("ptqengine TensorStats.update threads=2", nbytes / best_seconds(ours(2), repeat) / 1e9),
        ("numpy np.histogram(x, bins=2048)", nbytes / best_seconds(np_hist, repeat) / 1e9),
        ("numpy np.abs(x).max() (memory floor)", nbytes / best_seconds(np_absmax, repeat) / 1e9),
    ]
    if ort is None:
        rows.append(("onnxruntime HistogramCollector (entropy)", None))
    else:
        def ort_collect():
            c = ort_entropy_collector(ort)
            for b in batches:
                c.collect_value({"t": b})
        rows.append(("onnxruntime HistogramCollector (entropy)", nbytes / best_seconds(ort_collect, repeat) / 1e9))
    if mo is None:
        rows.append(("ModelOpt HistogramCalibrator.collect", None))
    else:
        torch, HistogramCalibrator = mo
        tensors = [torch.from_numpy(b) for b in batches]

        def mo_collect():
            c = HistogramCalibrator(num_bins=NUM_BINS)
            for t in tensors:
                c.collect(t)
        rows.append(("ModelOpt HistogramCalibrator.collect (1 thread)",
                     nbytes / best_seconds(mo_collect, repeat) / 1e9))
    return rows


# --- (b) scale search ------------------------------------------------------------------------
def search_rows(batches: list[np.ndarray], repeat: int, ort, mo) -> list[tuple[str, Optional[float], Optional[float]]]:
    """(label, milliseconds per tensor, amax) rows; the stats hold all values of `batches`."""
    stats = ptqengine.TensorStats(NUM_BINS)
    for b in batches:
        stats.update(b)
    rows: list[tuple[str, Optional[float], Optional[float]]] = []
    for method in ("entropy", "mse", "percentile"):
        amax = compute_amax(stats, method)
        ms = best_seconds(lambda: compute_amax(stats, method), repeat) * 1e3
        rows.append((f"ptqengine compute_amax('{method}')", ms, amax))
    hist, width = stats.search_histogram()
    ms = best_seconds(stats.search_histogram, repeat) * 1e3
    rows.append(("  of which: re-bin grid -> 2048 bins", ms, None))
    ms = best_seconds(lambda: amax_from_histogram(hist, width, "entropy"), repeat) * 1e3
    rows.append(("  of which: entropy search on 2048 bins", ms, None))
    many = [stats.copy() for _ in range(32)]
    for threads in (1, 2):
        ms = best_seconds(lambda: ptqengine.compute_amax_many(many, "entropy", threads=threads),
                            max(1, repeat // 4)) * 1e3 / len(many)
        rows.append((f"ptqengine compute_amax_many entropy, 32 tensors, threads={threads}", ms, None))

    if ort is None:
        rows.append(("onnxruntime HistogramCollector entropy", None, None))
    else:
        whole = np.concatenate(batches)
        with quiet():
            c = ort_entropy_collector(ort)
            c.collect_value({"t": whole})  # one pass over all values, as its calibrater does
            hist_tuple = c.histogram_dict["t"]
            t0 = time.perf_counter()
            lo, hi = c.get_entropy_threshold(hist_tuple, NUM_QUANTIZED_BINS)
            ms = (time.perf_counter() - t0) * 1e3  # seconds per call: one run is enough
            rows.append(("onnxruntime HistogramCollector entropy (signed, 2048)", ms, float(max(-lo, hi))))
            p = ort_percentile_collector(ort)
            p.collect_absolute_value({"t": whole})
            t0 = time.perf_counter()
            res = p.compute_percentile()["t"]
            ms = (time.perf_counter() - t0) * 1e3
            rows.append(("onnxruntime HistogramCollector percentile", ms, float(res[1])))
    if mo is None:
        rows.append(("ModelOpt HistogramCalibrator.compute_amax", None, None))
    else:
        torch, HistogramCalibrator = mo
        c = HistogramCalibrator(num_bins=NUM_BINS)
        # One collect over all values: exactly 2048 bins (growing batches would add bins and slow
        # its search further).
        c.collect(torch.from_numpy(np.concatenate(batches)))
        for method in ("entropy", "mse", "percentile"):
            kwargs = {"percentile": PERCENTILE} if method == "percentile" else {}
            t0 = time.perf_counter()
            amax = float(compute_amax(c, method, **kwargs))
            ms = (time.perf_counter() - t0) * 1e3  # entropy and mse take seconds: one run
            note = " (values wrong on CPU)" if method == "mse" else ""
            rows.append((f"ModelOpt compute_amax('{method}'){note}", ms, amax))
    return rows


def grid_rows(batches: list[np.ndarray], factors: list[int], repeat: int) -> None:
    """Update rate, entropy time and serialised size against the exact grid's resolution."""
    nbytes = sum(b.nbytes for b in batches)
    print(f"\n(c) grid resolution, {len(batches)} batches ({nbytes / 1e6:.0f} MB), threads=1")
    print(f"  {'grid_bins':>22s} {'update GB/s':>12s} {'entropy ms':>11s} {'to_bytes KB':>12s}")
    for f in factors:
        def run():
            s = ptqengine.TensorStats(NUM_BINS, grid_bins=NUM_BINS * f)
            for b in batches:
                s.update(b, threads=1)
            return s
        gbs = nbytes / best_seconds(run, repeat) / 1e9
        s = run()
        ms = best_seconds(lambda: compute_amax(s, "entropy"), max(repeat, 10)) * 1e3
        print(f"  {f'2048 * {f}':>22s} {gbs:12.2f} {ms:11.2f} {len(s.to_bytes()) / 1e3:12.0f}")


# --- report ----------------------------------------------------------------------------------
def fmt(v: Optional[float], spec: str) -> str:
    return "not installed" if v is None else format(v, spec)


def print_collection(kind: str, rows, per_batch: int, batches: int) -> None:
    ours = rows[0][1]
    print(f"\n(a) collection, {kind}: {batches} batches x {per_batch} float32 "
          f"({batches * per_batch * 4 / 1e6:.0f} MB), range growing")
    print(f"  {'':58s} {'GB/s':>13s} {'ours(t=1)/it':>13s}")
    for label, gbs in rows:
        ratio = "" if gbs is None else f"{ours / gbs:.2f}x"
        print(f"  {label:58s} {fmt(gbs, '13.2f'):>13s} {ratio:>13s}")


def print_search(kind: str, rows, n_values: int, absmax: float) -> None:
    ours = rows[0][1]
    print(f"\n(b) scale search per tensor, {kind}: {n_values} values, absmax {absmax:.4f}, 2048 bins")
    print(f"  {'':58s} {'ms/tensor':>13s} {'it/ours(ent)':>13s} {'amax':>10s}")
    for label, ms, amax in rows:
        ratio = "" if ms is None else f"{ms / ours:.1f}x"
        a = "" if amax is None else f"{amax:.4f}"
        print(f"  {label:58s} {fmt(ms, '13.3f'):>13s} {ratio:>13s} {a:>10s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=32, help="batches per collection run")
    ap.add_argument("--per-batch", type=int, default=1 << 20, help="float32 values per batch")
    ap.add_argument("--growth", type=float, default=4.0, help="range growth from first to last batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats (fastest reported)")
    ap.add_argument("--search-values", type=int, default=1 << 20, help="values behind each searched tensor")
    ap.add_argument("--quick", action="store_true", help="8 batches, 3 repeats")
    ap.add_argument("--dists", default="gaussian,relu,laplace")
    ap.add_argument("--grid-factors", default="32,128,512",
                    help="grid_bins = 2048 * F tried in section (c) on the first distribution ('' to skip)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeat = 8, 3

    ort = load_ort_collector()
    with quiet():
        mo = load_modelopt()
    print(f"ptqengine {ptqengine.__version__}; numpy {np.__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"peers: onnxruntime {'yes' if ort else 'not installed'}; "
          f"ModelOpt {'yes' if mo else 'not installed'}")

    for i, kind in enumerate(args.dists.split(",")):
        batches = make_batches(kind, args.batches, args.per_batch, args.growth, seed=i)
        print_collection(kind, collection_rows(batches, args.repeat, ort, mo), args.per_batch, args.batches)
        per = max(1, args.search_values // 8)
        search = make_batches(kind, 8, per, args.growth, seed=100 + i)
        absmax = float(max(np.abs(b).max() for b in search))
        print_search(kind, search_rows(search, max(args.repeat, 20), ort, mo), 8 * per, absmax)
        if i == 0 and args.grid_factors:
            grid_rows(batches[:16], [int(f) for f in args.grid_factors.split(",")], args.repeat)


if __name__ == "__main__":
    main()
