"""Plain-NumPy transcriptions of the documented calibration algorithms: slow and obvious on purpose.

They are what the native kernels are checked against (see ../shared/REFERENCES.md for the sources):
- entropy: TensorRT EntropyCalibration2 as described by Migacz (GTC 2017): Q from the unfolded bins,
  group j -> floor(j*nq/i), last minimum, threshold i*w. Which bins of Q stay empty is where public
  implementations differ (zero_mask): "folded" = the bins empty in P, outliers folded in (MXNet,
  onnxruntime, csrc/scale_search.h); "unfolded" = the bins empty in bins[:i] (ModelOpt /
  pytorch-quantization), where a candidate whose last bin is empty but receives outliers has KL = inf;
- percentile, mse: as ModelOpt's HistogramCalibrator describes them.
"""
from __future__ import annotations

import numpy as np


def abs_histogram(x: np.ndarray, num_bins: int = 2048) -> tuple[np.ndarray, float]:
    """TensorRT's histogram: num_bins bins of |x| over [0, absmax]; returns (counts, absmax)."""
    a = np.abs(x[np.isfinite(x)].astype(np.float64))
    amax = float(a.max()) if a.size else 0.0
    if amax == 0.0:
        counts = np.zeros(num_bins)
        counts[0] = a.size
        return counts, 0.0
    counts, _ = np.histogram(a, bins=num_bins, range=(0.0, amax))
    return counts.astype(np.float64), amax


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    if not q.sum() > 0:
        return float("inf")
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    if np.any(q[mask] == 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


ZERO_MASKS = ("folded", "unfolded")


def entropy_curve(bins: np.ndarray, num_quantized_bins: int = 128, start_bin: int = 128,
                  stride: int = 1, zero_mask: str = "folded") -> np.ndarray:
    """KL(P||Q) of every candidate i = start_bin, start_bin + stride, ..., len(bins)."""
    if zero_mask not in ZERO_MASKS:
        raise ValueError(f"zero_mask must be one of {ZERO_MASKS}")
    bins = np.asarray(bins, dtype=np.float64)
    out = []
    for i in range(start_bin, len(bins) + 1, stride):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        groups = (np.arange(i) * num_quantized_bins) // i
        totals = np.bincount(groups, weights=bins[:i], minlength=num_quantized_bins)
        nonzero = (p if zero_mask == "folded" else bins[:i]) > 0
        members = np.bincount(groups, weights=nonzero, minlength=num_quantized_bins)
        q = np.where(nonzero, totals[groups] / np.maximum(members[groups], 1), 0.0)
        out.append(kl_divergence(p, q))
    return np.array(out)


def last_argmin(curve: np.ndarray) -> int:
    """Index of the LAST minimum (ties go to the larger threshold, as ModelOpt)."""
    return len(curve) - 1 - int(np.argmin(curve[::-1]))


def entropy_amax_of_histogram(bins: np.ndarray, bin_width: float, zero_mask: str = "folded",
                              num_quantized_bins: int = 128, start_bin: int = 128) -> float:
    curve = entropy_curve(bins, num_quantized_bins, start_bin, zero_mask=zero_mask)
    return (start_bin + last_argmin(curve)) * bin_width


def entropy_amax(x: np.ndarray, num_bins: int = 2048, num_quantized_bins: int = 128,
                 start_bin: int = 128, zero_bin: str = "keep") -> float:
    """zero_bin="neighbour": bin 0 takes bin 1's count first (ModelOpt / pytorch-quantization)."""
    bins, amax = abs_histogram(x, num_bins)
    if amax == 0.0:
        return 0.0
    if zero_bin == "neighbour":
        bins[0] = bins[1]
    return entropy_amax_of_histogram(bins, amax / num_bins, "folded", num_quantized_bins, start_bin)


def percentile_amax(x: np.ndarray, percentile: float) -> float:
    a = np.sort(np.abs(x[np.isfinite(x)].astype(np.float64)))
    if a.size == 0:
        return 0.0
    k = int(np.ceil(percentile / 100.0 * a.size)) - 1
    return float(a[max(k, 0)])


def mse_amax(x: np.ndarray, num_bins: int = 2048, num_bits: int = 8, start_bin: int = 128) -> float:
    bins, amax = abs_histogram(x, num_bins)
    if amax == 0.0:
        return 0.0
    width = amax / num_bins
    centres = (np.arange(num_bins) + 0.5) * width
    qmax = 2 ** (num_bits - 1) - 1
    best, best_err = start_bin, np.inf
    for i in range(start_bin, num_bins):
        c = (i + 0.5) * width
        scale = c / qmax
        q = np.clip(np.round(centres / scale), 0, qmax) * scale
        err = float(np.sum(bins * (centres - q) ** 2))
        if err < best_err:
            best, best_err = i, err
    return (best + 0.5) * width


def asymmetric_range(x: np.ndarray, num_bits: int = 8, is_signed: bool = False,
                     percentile: float = 100.0) -> tuple[float, float, float, int]:
    f = x[np.isfinite(x)].astype(np.float64)
    if percentile >= 100.0:
        lo, hi = float(f.min()), float(f.max())
    else:
        lo, hi = float(np.percentile(f, 100 - percentile)), float(np.percentile(f, percentile))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if is_signed else (0, 2 ** num_bits - 1)
    scale = (hi - lo) / (qmax - qmin) or 1.0
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return lo, hi, scale, zp
