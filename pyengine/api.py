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
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from . import calibration
from .collect.convergence import ConvergenceOptions
from .errors import OptionError
from .result import CalibrationResult, result_from_stats
from .statsfile import load_stats

log = logging.getLogger(__name__)

AUTO = "auto"
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
    """
    start = time.perf_counter()
    auto = algo == AUTO
    if convergence is not None:
        _check_convergence(auto, scale_out)
    if auto and not isinstance(data, (str, Path, list, tuple, np.ndarray)):
        raise OptionError("algo 'auto' reads the data twice (statistics, then samples to measure on): give a "
                          "directory, files or a list, not a one-shot iterable or reader")
    base = "max" if auto else algo  # statistics do not depend on the algorithm
    if scale_out:
        from .distributed import calibrate_sharded

        result = calibrate_sharded(model, data, algo=base, algo_options=algo_options, progress=progress,
                                   **scale_out, **run_options)
    else:
        result = calibration.calibrate(model, data, algo=base, algo_options=algo_options, progress=progress,
                                       convergence=convergence, **run_options)
    _warn_raw_pixels(result)
    if not auto:
        return result
    from .analyze.auto_algo import auto_result

    keep = {k: run_options[k] for k in ("seed", "preprocess", "batch_size", "threads", "device") if k in run_options}
    chosen = auto_result(model, result, data, progress=stage_progress, **keep)
    chosen.report.seconds = time.perf_counter() - start  # the whole call, the auto runs included
    return chosen


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
    from .collect import RunOptions, model_sessions
    from .collect.feed import sample_batches
    from .model import inspect_model
    from .qdq import AccuracyOptions, quantize_model

    accuracy = AccuracyOptions(choose_ranges=choose_ranges, asymmetric=asymmetric)
    samples = sessions = None
    if data is not None:
        o = RunOptions(**{k: v for k, v in run_options.items() if k in ("seed", "preprocess", "batch_size",
                                                                         "threads", "device")})
        samples = sample_batches(inspect_model(model), data, accuracy.max_samples, o.seed, o.preprocess,
                                 o.batch_size, o.threads)
        sessions = model_sessions(o.device, o.threads)
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
        raise OptionError("static mode needs exactly one of --data DIR or --stats STATS (or use --mode dynamic)")
    base = algo or "entropy"
    if stats is not None:
        if algo == AUTO:
            raise OptionError("--algo auto measures the output error on samples: give --data (not --stats)")
        calibration_result = result_from_stats(load_stats(stats), base, **(algo_options or {}))
    else:
        calibration_result = calibrate(model, data, algo=base, algo_options=algo_options, progress=progress,
                                       stage_progress=stage_progress, **run_options)
    result = export_qdq(model, output, calibration_result, data=data, choose_ranges=algo is None,
                        asymmetric=asymmetric, per_channel=per_channel, exclude=exclude,
                        exclude_op_types=exclude_op_types, fp16_fallback=fp16_fallback, **run_options)
    return result, calibration_result
