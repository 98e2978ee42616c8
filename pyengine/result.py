"""A calibration's result: the statistics, the algorithm that turned them into ranges, and the ranges.

`result_from_stats` derives ranges from saved statistics without running the model (`export`); a result's
`with_algo` re-derives them with another algorithm. Writers for each output format hang off the result.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .algorithms import ALGORITHMS, compute_amax_many, resolve_options
from .errors import OptionError
from .statsfile import StatsBundle, save_stats

PathLike = Union[str, Path]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@dataclass
class RunReport:
    samples: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0  # the whole call, set-up and range search included
    samples_per_s: float = 0.0  # over the data pass: what the progress bar shows
    peak_rss_mb: float = 0.0
    nonfinite_tensors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    # Wall time by stage (setup, inference, stats, data_wait, collect, amax) and bytes of activations folded in.
    timings: Dict[str, float] = field(default_factory=dict)
    activation_bytes: int = 0


@dataclass
class CalibrationResult:
    stats: StatsBundle
    algo: str
    algo_options: Dict[str, Any]
    amax: Dict[str, float]  # graph order
    report: RunReport

    @property
    def cache_amax(self) -> Dict[str, float]:
        """What a TensorRT cache lists: every activation's amax, then the model's constants' (max|value|,
        recorded with the statistics: ptqengine.model.constant_ranges)."""
        return {**self.amax, **{n: v for n, v in self.stats.constants.items() if n not in self.amax}}

    def write_trt_cache(self, path: PathLike, version: str = "10.3.0", calibrator: str = "entropy2") -> List[str]:
        """TensorRT calibration cache (scale = amax / 127 per tensor). Returns warnings."""
        from .formats.trt_cache import write_trt_cache

        return write_trt_cache(path, self.cache_amax, version=version, calibrator=calibrator)

    def to_json(self, path: PathLike) -> None:
        from .formats.scales_json import write_scales_json

        write_scales_json(path, self)

    def save_stats(self, path: PathLike) -> None:
        save_stats(path, self.stats)

    def with_algo(self, algo: str, threads: Optional[int] = None, **options: Any) -> "CalibrationResult":
        """The same statistics, amax re-derived by another algorithm (no inference)."""
        algo, resolved, amax = amax_for(self.stats, algo, options, threads)
        return CalibrationResult(self.stats, algo, resolved, amax, self.report)


def resolve_algo(algo: str, options: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """A symmetric algorithm's name and options with defaults filled in; OptionError otherwise."""
    if algo not in ALGORITHMS:
        raise OptionError(f"unknown algorithm {algo!r}; valid: {', '.join(n for n, a in ALGORITHMS.items() if a.symmetric)}")
    if not ALGORITHMS[algo].symmetric:
        raise OptionError(f"algorithm {algo!r} is asymmetric; a calibration result holds symmetric amax only")
    try:
        return algo, resolve_options(algo, dict(options))
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def amax_for(bundle: StatsBundle, algo: str, options: Mapping[str, Any],
             threads: Optional[int]) -> Tuple[str, Dict[str, Any], Dict[str, float]]:
    """(algorithm, resolved options, amax per tensor in graph order)."""
    algo, resolved = resolve_algo(algo, options)
    names = list(bundle.tensors)
    try:
        values = compute_amax_many([bundle.tensors[n] for n in names], algo,
                                   threads=threads or os.cpu_count(), names=names, **resolved)
    except ValueError as exc:  # e.g. per_channel on per-tensor statistics
        raise OptionError(f"{algo}: {exc}") from None
    return algo, resolved, {n: float(v) for n, v in zip(names, values)}


def result_from_stats(bundle: StatsBundle, algo: str = "entropy", **options: Any) -> CalibrationResult:
    """A result from saved statistics (export): amax by `algo`, report from the metadata."""
    threads = options.pop("threads", None)
    algo, resolved, amax = amax_for(bundle, algo, options, threads)
    meta = bundle.metadata
    report = RunReport(samples=int(meta.get("samples", 0)),
                       nonfinite_tensors=[n for n, s in bundle.tensors.items() if s.nan_count or s.inf_count])
    return CalibrationResult(bundle, algo, resolved, amax, report)
