"""The grid kernels, native and naive NumPy twin (tests/naive_kernels.py) side by side.

Each test runs on both implementations (expected values worked out by hand or from a property
that holds independently of the code), and the *_agree tests compare the two on random data.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import naive_kernels as naive
from naive_kernels import EMPTY_EXPONENT, GridState
from ptqengine import TensorStats, _core
from ptqengine._dtypes import COUNT_DTYPE


def _state_of(s: TensorStats) -> GridState:
    n = s._native
    channels = (n.channel_min(), n.channel_max()) if s.axis is not None else (None, None)
    return GridState(n.exponent, n.signed_counts(), n.count, n.nan_count, n.inf_count,
                     float(n.min), float(n.max), *channels, native=s)


def _native_bin_values(x, exponent, grid_bins):
    counts = np.zeros(2 * grid_bins, dtype=COUNT_DTYPE)  # OUT, allocated by the caller
    _core.kernels.bin_values(np.ascontiguousarray(x, dtype=np.float32), exponent, grid_bins, counts)
    return counts


def _native_grow(counts, old_exponent, new_exponent):
    out = counts.copy()
    _core.kernels.grow(out, old_exponent, new_exponent)
    return out


def _native_rebin(signed_counts, exponent, absmax, num_bins):
    out = np.empty(num_bins)  # OUT
    _core.kernels.rebin(signed_counts, exponent, absmax, out)
    return out


def _native_update(x, grid_bins, axis=None):
    return _state_of(TensorStats(num_bins=grid_bins // 2, grid_bins=grid_bins, axis=axis).update(x))


def _native_merge(a, b):
    return _state_of(a.native.copy().merge(b.native))


native = types.SimpleNamespace(bin_values=_native_bin_values, grow=_native_grow, rebin=_native_rebin,
                               update=_native_update, merge=_native_merge)
IMPLS = pytest.mark.parametrize("impl", [native, naive], ids=["native", "naive"])


def values(n, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(np.float32)


# --- grid binning ------------------------------------------------------------------------------
@IMPLS
def test_bin_values_by_hand(impl):
    # 4 bins per sign on [0, 1): width 0.25; -0.0 is non-negative; NaN and Inf are not binned.
    x = np.array([0, 0.1, 0.25, 0.3, 0.99, -0.5, -0.0, np.nan, np.inf], dtype=np.float32)
    assert impl.bin_values(x, 0, 4).tolist() == [3, 2, 0, 1, 0, 0, 1, 0]


@IMPLS
def test_empty_grid_holds_zeros(impl):
    x = np.array([0.0, -0.0, np.nan], dtype=np.float32)
    assert impl.bin_values(x, EMPTY_EXPONENT, 4).tolist() == [2, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("kind", ["finite", "nan_blocks", "subnormal", "huge"])
@pytest.mark.parametrize("grid_bins", [32, 4096])
def test_bin_values_agree(kind, grid_bins):
    x = values(20_000, 1, 3.0)  # several 4096-value blocks
    if kind == "nan_blocks":  # the scalar path in some blocks, the vectorised one in others
        x[5000] = np.nan
        x[13_000] = -np.inf
    elif kind == "subnormal":  # grid scale beyond float range: the double-precision path
        x = x * np.float32(1e-39)
    elif kind == "huge":
        x = x * np.float32(1e37)
    finite = x[np.isfinite(x)]
    exponent = naive.exponent_above(np.abs(finite).max())
    for e in (exponent, min(exponent + 3, 128)):  # the smallest grid that fits, a coarser one
        np.testing.assert_array_equal(native.bin_values(x, e, grid_bins), naive.bin_values(x, e, grid_bins))


# --- grid growth -------------------------------------------------------------------------------
@IMPLS
def test_grow_by_hand(impl):
    counts = np.arange(1, 9, dtype=COUNT_DTYPE)  # 4 bins per sign: [1 2 3 4 | 5 6 7 8]
    assert impl.grow(counts, 0, 1).tolist() == [3, 7, 0, 0, 11, 15, 0, 0]
    assert impl.grow(counts, 0, 2).tolist() == [10, 0, 0, 0, 26, 0, 0, 0]
    assert impl.grow(counts, -5, 40).tolist() == [10, 0, 0, 0, 26, 0, 0, 0]
    zeros = np.array([5, 0, 0, 0, 0, 0, 0, 0], dtype=COUNT_DTYPE)
    assert impl.grow(zeros, EMPTY_EXPONENT, 7).tolist() == zeros.tolist()


@IMPLS
def test_grown_grid_equals_direct_binning(impl):
    # Binning on a small grid then growing equals binning on the large grid: the exactness the
    # whole design rests on (binning.h).
    x = values(10_000, 2, 0.3)
    e = naive.exponent_above(np.abs(x).max())
    for d in (1, 2, 5, 13, 20):
        np.testing.assert_array_equal(impl.grow(impl.bin_values(x, e, 1024), e, e + d),
                                      naive.bin_values(x, e + d, 1024))


def test_grow_agrees():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 1000, 2 * 256).astype(COUNT_DTYPE)
    for old, new in [(0, 0), (0, 1), (3, 7), (-4, 4), (1, 30), (EMPTY_EXPONENT, 2)]:
        np.testing.assert_array_equal(native.grow(counts, old, new), naive.grow(counts, old, new))


# --- re-binning to the search histogram -------------------------------------------------------
@IMPLS
def test_rebin_by_hand(impl):
    # 4 bins per sign of width 1 (exponent 2); |x| counts [2, 2, 4, 0]; absmax 2.5 over 5 bins of
    # width 0.5: each grid bin splits evenly over the search bins it covers; the bin holding
    # absmax is cut at it.
    counts = np.array([2, 0, 4, 0, 0, 2, 0, 0], dtype=COUNT_DTYPE)
    np.testing.assert_allclose(impl.rebin(counts, 2, 2.5, 5), [1, 1, 1, 1, 4])
    # absmax exactly on a grid edge: that bin's values all equal absmax, so the last bin.
    np.testing.assert_allclose(impl.rebin(counts, 2, 2.0, 4), [1, 1, 1, 5])
    assert impl.rebin(counts, 2, 0.0, 3).tolist() == [2, 0, 0]


def test_rebin_agrees():
    x = values(50_000, 4, 2.0)
    s = TensorStats(num_bins=64, grid_bins=2048).update(x)
    counts, e, absmax = s._native.signed_counts(), s._native.exponent, float(s.absmax)
    for num_bins in (1, 7, 64, 2048):
        got, ref = native.rebin(counts, e, absmax, num_bins), naive.rebin(counts, e, absmax, num_bins)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)
        assert got.sum() == pytest.approx(x.size, rel=1e-12)
    # ... and what compute_amax searches is this histogram.
    np.testing.assert_array_equal(s.search_histogram(64)[0], native.rebin(counts, e, absmax, 64))


# --- whole updates and merges -------------------------------------------------------------------
@IMPLS
def test_merge_equals_one_pass(impl):
    x = values(30_000, 5, 1.0)
    x[::997] *= 1000  # the range keeps growing across the parts
    x[123] = np.nan
    parts = np.array_split(x, 5)
    merged = impl.update(parts[0], 1024)
    for p in reversed(parts[1:]):
        merged = impl.merge(merged, impl.update(p, 1024))
    assert merged.key() == impl.update(x, 1024).key()


@IMPLS
def test_update_by_hand(impl):
    x = np.array([[1.5, -0.25], [np.nan, 3.0]], dtype=np.float32)
    s = impl.update(x, 32, axis=0)  # exponent 2: bins of width 4 / 32 = 0.125
    assert (s.exponent, s.count, s.nan_count, s.inf_count, s.min, s.max) == (2, 4, 1, 0, -0.25, 3.0)
    assert {int(b): int(c) for b, c in enumerate(s.counts) if c} == {12: 1, 24: 1, 32 + 2: 1}
    assert s.channel_min.tolist() == [-0.25, 3.0] and s.channel_max.tolist() == [1.5, 3.0]


@pytest.mark.parametrize("axis", [None, 1])
def test_update_agrees(axis):
    x = values(3 * 40 * 50, 6, 5.0).reshape(3, 40, 50)
    x[0, 3, 7] = -np.inf
    x[2, :, :] *= np.float32(1e-3)
    assert native.update(x, 2048, axis).key() == naive.update(x, 2048, axis).key()
