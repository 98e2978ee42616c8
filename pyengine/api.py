"""The library's front door: `calibrate` and `quantize` as a user (or the CLI) asks for them.

Both sit above the commands they combine: a calibration run (one process, or sharded over processes / Ray),
`algo="auto"` (which measures the model's output error on samples of the data: ptqengine.analyze.auto_algo)
and the Q/DQ export. Each CLI command is its options, one call here (or to one command module) and the
rendering of the result.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import calibration
from .algorithms import AUTO, CHOICE
from .collect.convergence import ConvergenceOptions
from .errors import OptionError
from .loader_script import LoaderScript
from .result import CalibrationResult, result_from_stats

log = logging.getLogger(__name__)

RERUNNABLE = (str, Path, list, tuple, np.ndarray, LoaderScript)  # data that can be read again for the samples
PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
StageProgress = Callable[[str, int, Optional[int]], None]


def calibrate(model: PathLike, data: Any, *, algo: str = "entropy", algo_options: Optional[Dict[str, Any]] = None,
              progress: Optional[Progress] = None, stage_progress: Optional[StageProgress] = None,
              scale_out: Optional[Mapping[str, Any]] = None, convergence: Optional[ConvergenceOptions] = None,
              **run_options: Any) -> CalibrationResult:
    """Statistics of every activation over `data`, then ranges by `algo`.

    Run options as ptqengine.calibration.calibrate takes them (batch_size, limit, seed, threads, preprocess,
    strict, num_bins, device). scale_out: ptqengine.distributed.calibrate_sharded's options (engine, workers,
    ray_address, gpus_per_worker, shard_size, max_retries, resume_dir): the same statistics, byte for byte,
    from shards. algo="auto": the statistics once, then per tensor the range that minimises the model's
    output error on 32 samples of `data` (stage_progress(stage, done, total) reports those runs).
    convergence: measure how settled the ranges are, and with until_stable stop reading once they are
    (ptqengine.collect.convergence); single-process runs of one algorithm only.
    algo="choice" (the CLI's default): the entropy ranges and the other algorithms' are candidates, and each
    tensor takes the one its quantised layers reproduce best on 32 samples of `data`, under TensorRT's own
    weight quantisation (ptqengine.qdq.trt_implicit); the cache then holds what the Q/DQ export would choose.
    """
    start = time.perf_counter()
    auto, choice = algo == AUTO, algo == CHOICE
    if convergence is not None:
        _check_convergence(auto, scale_out)
    if (auto or choice) and not isinstance(data, RERUNNABLE):
        raise OptionError(f"algo {algo!r} reads the data twice (statistics, then samples to measure on): give a "
                          "directory, files, a list or a loader script, not a one-shot iterable or reader "
                          "(or another --algo)")
    base = "max" if auto else "entropy" if choice else algo  # statistics do not depend on the algorithm
    if scale_out:
        from .distributed import calibrate_sharded

        result = calibrate_sharded(model, data, algo=base, algo_options=algo_options, progress=progress,
                                   **scale_out, **run_options)
    else:
        result = calibration.calibrate(model, data, algo=base, algo_options=None if choice else algo_options,
                                       progress=progress, convergence=convergence, chosen_later=choice,
                                       **run_options)
    _warn_raw_pixels(result)
    if not (auto or choice):
        return result
    keep = {k: run_options[k] for k in SAMPLE_OPTIONS if k in run_options}
    if auto:
        from .analyze.auto_algo import auto_result

        chosen = auto_result(model, result, data, progress=stage_progress, **keep)
    else:
        chosen = _choose_for_cache(model, result, data, keep, stage_progress)
    chosen.report.seconds = time.perf_counter() - start  # the whole call, the sample runs included
    return chosen


SAMPLE_OPTIONS = ("seed", "preprocess", "batch_size", "threads", "device", "limit")  # limit: taken within it


def _samples(model: PathLike, data: Any, count: int, run_options: Mapping[str, Any]):
    """(the first `count` seeded samples of `data` in batches, a Sessions callable) for the data-driven steps."""
    from .collect import RunOptions, model_sessions
    from .collect.feed import sample_batches
    from .model import inspect_model

    o = RunOptions(**{k: v for k, v in run_options.items() if k in SAMPLE_OPTIONS})
    samples = sample_batches(inspect_model(model), data, count, o.seed, o.preprocess, o.batch_size, o.threads,
                             within=o.limit)
    return samples, model_sessions(o.device, o.threads)


def _choose_for_cache(model: PathLike, result: CalibrationResult, data: Any, run_options: Mapping[str, Any],
                      stage_progress: Optional[StageProgress] = None) -> CalibrationResult:
    """algo="choice": the Q/DQ export's per-tensor range choice under TensorRT's weight quantisation."""
    from .qdq.accuracy import CANDIDATE_ALGOS
    from .qdq.trt_implicit import CACHE_CHOICE, choose_cache_ranges

    from .model import load_model

    samples, sessions = _samples(model, data, CACHE_CHOICE.max_samples, run_options)
    progress = None if stage_progress is None else lambda done, total: stage_progress(CHOICE, done, total)
    amax, summary = choose_cache_ranges(load_model(model), str(model), result.amax, result.stats.tensors, samples,
                                        sessions, progress)
    facts = {"candidates": [*CANDIDATE_ALGOS, "bound"], "criterion": "reading layers' output error",
             "weights": "per-channel max|w|/127 (TensorRT's)", **summary}
    return CalibrationResult(result.stats, CHOICE, facts, amax, result.report)


def _warn_raw_pixels(result: CalibrationResult) -> None:
    """Images without mean/std: a warning Python callers see too (a note in the report alone is silent
    there). The note stays in the report; the command line prints a note it has just logged only once."""
    from .preprocess import RAW_PIXELS_NOTE

    if RAW_PIXELS_NOTE in result.report.notes:
        log.warning(RAW_PIXELS_NOTE)


def _check_convergence(auto: bool, scale_out: Optional[Mapping[str, Any]]) -> None:
    """Where convergence is not measured, say so before any work."""
    if scale_out:
        raise OptionError("--convergence / --until-stable need the single-process run: the sharded engines read "
                          "fixed slices of the sorted image list in parallel and merge them in a tree, so there is "
                          "no random-order prefix to checkpoint or stop at; run without --engine")
    if auto:
        raise OptionError("--convergence / --until-stable measure one algorithm's ranges; --algo auto chooses per "
                          "tensor afterwards: give --algo entropy, max, percentile or mse")


def export_qdq(model: PathLike, output: Optional[PathLike], calibration: Any, *, data: Any = None,
               choose_ranges: bool = True, asymmetric: bool = False, per_channel: bool = True,
               exclude: Sequence[str] = (), exclude_op_types: Sequence[str] = (), fp16_fallback: Sequence[str] = (),
               **run_options: Any):
    """The static Q/DQ model for a calibration: the data-free accuracy methods always, and with `data` the
    data-driven ones on its first samples (ptqengine.qdq.accuracy). choose_ranges: per tensor, the candidate
    range whose reading layers' output error is least (the default when no algorithm was asked for).
    Run options: seed, preprocess, batch_size, threads, device."""
    from .qdq import AccuracyOptions, quantize_model

    accuracy = AccuracyOptions(choose_ranges=choose_ranges, asymmetric=asymmetric)
    samples = sessions = None
    if data is not None:
        samples, sessions = _samples(model, data, accuracy.max_samples, run_options)
    result = quantize_model(model, output, calibration=calibration, per_channel=per_channel, exclude=exclude,
                            exclude_op_types=exclude_op_types, fp16_fallback=fp16_fallback, samples=samples,
                            accuracy=accuracy, sessions=sessions)
    if data is None:
        result.report.notes.append("no calibration samples (--stats without --data): the data-driven accuracy "
                                   "methods (per-tensor ranges, rounding, bias correction) were skipped")
    return result


def quantize(model: PathLike, output: Optional[PathLike] = None, *, data: Any = None,
             stats: Optional[PathLike] = None, algo: Optional[str] = None,
             algo_options: Optional[Dict[str, Any]] = None, mode: str = "static", per_channel: bool = True,
             asymmetric: bool = False, exclude: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
             fp16_fallback: Sequence[str] = (), progress: Optional[Progress] = None,
             stage_progress: Optional[StageProgress] = None, **run_options: Any):
    """An int8 ONNX model: static Q/DQ from a calibration on `data` or from saved `stats`, or dynamic.

    algo None (the default): the statistics' entropy ranges are candidates with the other algorithms', and
    each tensor takes the one its quantised layers reproduce best on `data` samples; an explicit algo gives
    exactly its ranges. Returns (ptqengine.qdq.QuantizeResult, the CalibrationResult used or None)."""
    from .qdq import quantize_model

    if mode != "static":
        result = quantize_model(model, output, mode=mode, per_channel=per_channel, exclude=exclude,
                                exclude_op_types=exclude_op_types, fp16_fallback=fp16_fallback)
        if data is not None or stats is not None:
            result.report.notes.insert(0, "--mode dynamic needs no calibration: --data / --stats ignored")
        return result, None
    if (data is None) == (stats is None):
        raise OptionError("static mode needs exactly one of --data DIR (or --data-loader-script) or --stats STATS "
                          "(or use --mode dynamic)")
    base = algo or "entropy"
    if stats is not None:
        if algo == AUTO:
            raise OptionError("--algo auto measures the output error on samples: give --data (not --stats)")
        from .collect import RunOptions
        from .collect.statistics import statistics_for

        saved_notes: List[str] = []  # statistics of another model file say so, as analyze and horizon do
        bundle = statistics_for(model, None, stats, RunOptions(), notes=saved_notes)
        calibration_result = result_from_stats(bundle, base, **(algo_options or {}))
        calibration_result.report.notes[:0] = saved_notes
    else:
        calibration_result = calibrate(model, data, algo=base, algo_options=algo_options, progress=progress,
                                       stage_progress=stage_progress, **run_options)
    result = export_qdq(model, output, calibration_result, data=data, choose_ranges=algo is None,
                        asymmetric=asymmetric, per_channel=per_channel, exclude=exclude,
                        exclude_op_types=exclude_op_types, fp16_fallback=fp16_fallback, **run_options)
    if stats is not None:
        result.report.notes[:0] = [n for n in calibration_result.report.notes if n not in result.report.notes]
    return result, calibration_result
