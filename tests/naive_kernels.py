"""Naive NumPy twins of the native grid kernels (csrc/grid.h, csrc/scale_search.h).

Written from the definitions in csrc/binning.h and csrc/scale_search.h, for clarity and not speed:
the tests run the same checks on these and on the native kernels, and compare the two.

The grid: G = 2^k bins per sign, bin b of |x| covers [b, b + 1) * 2^exponent / G; one array of 2G
counts holds x >= 0 (-0.0 included) in [0, G) and x < 0 in [G, 2G). EMPTY_EXPONENT is the grid
that has seen only zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ptqengine._dtypes import COUNT_DTYPE

EMPTY_EXPONENT = -1000


def log2_of(grid_bins: int) -> int:
    k = int(grid_bins).bit_length() - 1
    assert 1 << k == grid_bins, "grid_bins must be a power of two"
    return k


def exponent_above(a: float) -> int:
    """Smallest k with a < 2^k, for a finite a > 0 (float32 subnormals included)."""
    return int(np.frexp(np.float64(a))[1])


@dataclass
class GridState:
    """Everything an update accumulates (csrc/tensor_stats.h, TensorStats::State)."""

    exponent: int
    counts: np.ndarray  # 2G counts
    count: int
    nan_count: int
    inf_count: int
    min: float
    max: float
    channel_min: Optional[np.ndarray] = None
    channel_max: Optional[np.ndarray] = None
    native: object = field(default=None, compare=False, repr=False)  # the native twin's object

    def key(self) -> tuple:
        """Comparable form (NaN-free: empty ranges are +-inf)."""
        channels = () if self.channel_min is None else (tuple(self.channel_min), tuple(self.channel_max))
        return (self.exponent, tuple(self.counts.tolist()), self.count, self.nan_count,
                self.inf_count, self.min, self.max, channels)


def bin_values(x: np.ndarray, exponent: int, grid_bins: int) -> np.ndarray:
    """Signed grid counts of the finite values of x on the grid of `exponent`."""
    g = int(grid_bins)
    x = np.asarray(x, dtype=np.float32).ravel().astype(np.float64)
    x = x[np.isfinite(x)]
    counts = np.zeros(2 * g, dtype=COUNT_DTYPE)
    if exponent == EMPTY_EXPONENT:
        assert not np.any(x), "the empty grid holds zeros only"
        counts[0] = x.size
        return counts
    # |x| * 2^(log2 G - exponent) is exact in float64: a float32 times a power of two.
    scaled = np.abs(x) * np.ldexp(1.0, log2_of(g) - exponent)
    assert np.all(scaled < g), "a value does not fit the grid"
    bins = np.floor(scaled).astype(np.int64) + np.where(x < 0, g, 0)
    return np.bincount(bins, minlength=2 * g).astype(COUNT_DTYPE)


def grow(counts: np.ndarray, old_exponent: int, new_exponent: int) -> np.ndarray:
    """The signed grid regrown to new_exponent: bins summed in groups of 2^(new - old)."""
    g = counts.size // 2
    k = log2_of(g)
    if new_exponent <= old_exponent:
        return counts.copy()
    shift = k + 1 if old_exponent == EMPTY_EXPONENT else new_exponent - old_exponent
    sides = []
    for side in (counts[:g], counts[g:]):
        out = np.zeros(g, dtype=COUNT_DTYPE)
        if shift > k:
            out[0] = side.sum()
        else:
            summed = side.reshape(g >> shift, 1 << shift).sum(axis=1)
            out[:summed.size] = summed
        sides.append(out)
    return np.concatenate(sides)


def update(x: np.ndarray, grid_bins: int, axis: Optional[int] = None) -> GridState:
    """One pass over x (float32 or float16) from empty statistics."""
    x = np.asarray(x)
    values = x.astype(np.float32).astype(np.float64)
    finite = values[np.isfinite(values)] + 0.0  # -0.0 -> +0.0, as the kernel counts it
    lo = float(finite.min()) if finite.size else np.inf
    hi = float(finite.max()) if finite.size else -np.inf
    absmax = max(abs(lo), abs(hi)) if finite.size else 0.0
    exponent = exponent_above(absmax) if absmax > 0 else EMPTY_EXPONENT
    state = GridState(exponent, bin_values(values, exponent, grid_bins), int(values.size),
                      int(np.isnan(values).sum()), int(np.isinf(values).sum()), lo, hi)
    if axis is not None:
        moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        state.channel_min = np.full(moved.shape[0], np.inf, dtype=np.float32)
        state.channel_max = np.full(moved.shape[0], -np.inf, dtype=np.float32)
        for c, row in enumerate(moved):
            row = row[np.isfinite(row)] + 0.0
            if row.size:
                state.channel_min[c], state.channel_max[c] = row.min(), row.max()
    return state


def merge(a: GridState, b: GridState) -> GridState:
    """Both on the larger grid, counts added, ranges combined."""
    target = max(a.exponent, b.exponent)
    counts = grow(a.counts, a.exponent, target) + grow(b.counts, b.exponent, target)
    out = GridState(target, counts, a.count + b.count, a.nan_count + b.nan_count,
                    a.inf_count + b.inf_count, min(a.min, b.min), max(a.max, b.max))
    if a.channel_min is not None:
        out.channel_min = np.minimum(a.channel_min, b.channel_min)
        out.channel_max = np.maximum(a.channel_max, b.channel_max)
    return out


def rebin(signed_counts: np.ndarray, exponent: int, absmax: float, num_bins: int) -> np.ndarray:
    """The search histogram: num_bins bins over [0, absmax], each grid bin's count split in
    proportion to its overlap (the grid bin holding absmax is cut at absmax; all of a bin that
    starts at absmax goes to the last search bin)."""
    g = signed_counts.size // 2
    abs_counts = (signed_counts[:g] + signed_counts[g:]).astype(np.float64)
    out = np.zeros(num_bins)
    if absmax == 0.0:
        out[0] = abs_counts[0]
        return out
    w = np.ldexp(1.0, exponent - log2_of(g))
    edges = np.arange(num_bins + 1) * (absmax / num_bins)
    edges[-1] = np.inf  # the last search bin takes everything up to absmax
    for f in np.flatnonzero(abs_counts):
        lo, hi = f * w, min((f + 1) * w, absmax)
        if hi <= lo:
            out[-1] += abs_counts[f]
            continue
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
        out += abs_counts[f] * overlap / (hi - lo)
    return out
