"""`calibrate`: model + data -> statistics of every float activation -> amax by an algorithm, streaming.

The statistics run is the collection core's (ptqengine.collect.statistics); this module adds the range
search and the run report. `algo="auto"` is not here: it measures the model's output error and lives with
`analyze` (ptqengine.api.calibrate calls both).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .collect import Collected, RunOptions
from .collect.convergence import ConvergenceOptions, SplitHalfTracker
from .formats.convergence import RECORD_KEY
from .collect.statistics import collect_bundle
from .result import CalibrationResult, RunReport, amax_for, peak_rss_mb, resolve_algo
from .stats import TensorStats

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]


def calibrate(model: PathLike, data: Any, *, algo: str = "entropy", algo_options: Optional[Dict[str, Any]] = None,
              options: Optional[RunOptions] = None, progress: Optional[Progress] = None,
              convergence: Optional[ConvergenceOptions] = None, chosen_later: bool = False,
              **run_options: Any) -> CalibrationResult:
    """Run the model over the data, collect statistics of every float activation, derive amax by algo.

    data: a directory of images (jpg/jpeg/png/bmp/webp, recursive; preprocessed by `preprocess`), a
    .npy/.npz file or a directory of them (npz keys = input names), a list of arrays (single-input
    models), an iterable of feed dicts, or an onnxruntime CalibrationDataReader. Arrays are either one
    sample (no batch dim) or a batch; samples are regrouped into `batch_size` (or the model's fixed
    batch). Run options (RunOptions, or as keywords): batch_size, limit (a seeded sample of that many
    images; for array data, the first `limit` samples), seed, threads, preprocess, strict, num_bins,
    device ("cpu", "cuda:N"). Bad data raises DataError, bad options OptionError, an unusable model
    ModelError.

    convergence: also measure how settled the ranges are (ptqengine.collect.convergence): images are read in
    a seeded random order, halves are checkpointed, and with until_stable reading stops once the estimate of
    the whole's error (half the halves' disagreement) is within the tolerance. The statistics are those of every
    sample folded in, byte for byte; the record lands in the metadata. With until_stable, entropy's ranges are
    judged on the percentile view (collect.convergence.tracked_algorithm) and then searched on what was read.
    chosen_later: the caller picks each tensor's range among the algorithms' afterwards (ptqengine.api, the
    default choice); convergence then judges the settling view, not `algo`'s ranges.
    """
    start = time.perf_counter()
    algo, resolved = resolve_algo(algo, algo_options or {})  # bad options fail before any work
    options = (options or RunOptions()).but(**run_options) if run_options else (options or RunOptions())
    tracker = None if convergence is None else \
        SplitHalfTracker(convergence, None if chosen_later else algo, resolved, threads=options.threads,
                         seed=options.seed)
    bundle, collected = collect_bundle(model, data, options, progress=progress, tracker=tracker)
    t_amax = time.perf_counter()
    if tracker is not None and tracker.ranges_are_the_runs:  # the last checkpoint searched the whole already
        amax = _last_checkpoint_amax(bundle.metadata[RECORD_KEY])
    else:
        _, _, amax = amax_for(bundle, algo, resolved, options.threads)
    collected.timings["amax"] = time.perf_counter() - t_amax
    return CalibrationResult(bundle, algo, resolved, amax, run_report(collected, time.perf_counter() - start))


def _last_checkpoint_amax(record: Mapping[str, Any]) -> Dict[str, float]:
    last = record["checkpoints"][-1]["amax"]
    return {name: math.nan if value is None else float(value) for name, value in zip(record["tensors"], last)}


def run_report(collected: Collected, seconds: float) -> RunReport:
    stats: Mapping[str, TensorStats] = collected.stats
    source = collected.source
    nonfinite = [n for n, s in stats.items() if s.nan_count or s.inf_count]
    if nonfinite:
        log.warning("NaN/Inf in %d activation(s): %s", len(nonfinite), ", ".join(nonfinite))
    notes: List[str] = list(collected.notes)
    gray = source.log.grayscale
    if gray:
        notes.append(f"{len(gray)} grayscale image(s) converted to 3 channels (first: {gray[0]})")
    data_pass = collected.timings.get("collect", 0.0)
    return RunReport(samples=collected.samples, skipped=list(source.log.skipped), seconds=seconds,
                     samples_per_s=collected.samples / data_pass if data_pass > 0 else 0.0,
                     peak_rss_mb=peak_rss_mb(), nonfinite_tensors=nonfinite, notes=notes + source.log.notes,
                     timings=dict(collected.timings), activation_bytes=collected.activation_bytes)
