"""TensorStats: counts, min/max, histograms, per-channel, serialisation, edge cases."""
import hashlib

import numpy as np
import pytest

import ptqengine
from ptqengine import TensorStats, _core
from ptqengine.algorithms import compute_amax


def test_native_version_matches_package():
    assert _core.__version__ == ptqengine.__version__


def test_basic_counts_and_extrema():
    x = np.array([[-3.0, 0.5], [2.0, 1.0]], dtype=np.float32)
    s = TensorStats().update(x)
    assert s.count == 4 and s.finite_count == 4
    assert s.min == -3.0 and s.max == 2.0 and s.absmax == 3.0
    assert s.histogram.sum() == 4
    assert s.signed_histogram.sum() == 4
    edges = s.bin_edges
    assert len(edges) == len(s.histogram) + 1
    assert edges[-2] <= 3.0 < edges[-1]  # bins are [lo, hi)


def test_histogram_bins_match_numpy_on_grid():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000).astype(np.float32)
    s = TensorStats().update(x)
    edges = s.bin_edges
    ref, _ = np.histogram(np.abs(x), bins=edges)
    # np.histogram closes the last bin on the right; the grid's top edge is above absmax anyway.
    np.testing.assert_array_equal(s.histogram, ref)


def test_signed_histogram_separates_signs():
    x = np.array([-1.5, -0.25, 0.25, 0.75, -0.0], dtype=np.float32)
    s = TensorStats().update(x)
    h, e = s.signed_histogram, s.signed_bin_edges
    centres = (e[:-1] + e[1:]) / 2
    assert h[centres < 0].sum() == 2 and h[centres > 0].sum() == 3  # -0.0 counts as non-negative


def test_nan_and_inf_counted_and_excluded():
    x = np.array([1.0, np.nan, -np.inf, np.inf, -2.0, np.nan], dtype=np.float32)
    s = TensorStats().update(x)
    assert s.count == 6 and s.nan_count == 2 and s.inf_count == 2 and s.finite_count == 2
    assert s.min == -2.0 and s.max == 1.0
    assert s.histogram.sum() == 2
    assert compute_amax(s, "max") == 2.0


def test_only_nonfinite_values():
    s = TensorStats().update(np.array([np.nan, np.inf], dtype=np.float32))
    assert np.isnan(s.min) and np.isnan(s.absmax)
    assert compute_amax(s, "entropy") == 0.0 and compute_amax(s, "max") == 0.0


@pytest.mark.parametrize("value", [0.0, 3.5, -7.25])
def test_constant_and_zero_arrays(value):
    x = np.full((64, 64), value, dtype=np.float32)
    s = TensorStats().update(x)
    assert s.min == s.max == value
    for method in ("max", "percentile", "entropy", "mse"):
        amax = compute_amax(s, method)
        assert 0.0 <= amax <= abs(value) + 1e-12
    assert compute_amax(s, "max") == abs(value)


def test_single_element_and_0d():
    s = TensorStats().update(np.float32(4.0))  # 0-d
    assert s.count == 1 and s.absmax == 4.0
    s.update(np.array([-5.0], dtype=np.float32))
    assert s.absmax == 5.0 and s.count == 2


def test_only_negative_values():
    x = -np.linspace(0.1, 9.0, 1000, dtype=np.float32)
    s = TensorStats().update(x)
    assert s.max < 0 and s.min == np.float32(-9.0)
    assert compute_amax(s, "max") == pytest.approx(9.0)
    r = compute_amax(s, "minmax_asym", num_bits=8, signed=False)
    assert r.hi == 0.0 and r.lo == pytest.approx(-9.0) and r.zero_point == 255


def test_huge_and_subnormal_magnitudes():
    x = np.array([1e30, -3e29, 1e-40, -1e-44, 0.0], dtype=np.float32)
    s = TensorStats().update(x)
    assert s.absmax == np.float32(1e30) and s.min == np.float32(-3e29)
    assert compute_amax(s, "percentile", percentile=100.0) == np.float32(1e30)
    tiny = np.array([1e-40, -2e-40, 3e-42], dtype=np.float32)  # all subnormal
    t = TensorStats().update(tiny)
    assert t.absmax == np.float32(2e-40)
    assert t.histogram.sum() == 3
    assert 0 < compute_amax(t, "entropy") <= np.float32(2e-40) * (1 + 1e-6)


def test_float16_equals_float32_of_same_values():
    rng = np.random.default_rng(2)
    h = (rng.standard_normal(10_000) * 50).astype(np.float16)
    h[:3] = [np.float16(6e-8), np.float16(-65504), np.nan]  # subnormal, largest, NaN
    a = TensorStats().update(h)
    b = TensorStats().update(h.astype(np.float32))
    assert a == b


def test_non_contiguous_views_equal_contiguous_copies():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 32, 8)).astype(np.float32)
    view = x[:, ::2, :].transpose(2, 0, 1)
    assert not view.flags.c_contiguous
    a = TensorStats(axis=0).update(view)
    b = TensorStats(axis=0).update(np.ascontiguousarray(view))
    assert a == b


def test_float64_is_accepted_and_ints_rejected():
    TensorStats().update(np.ones(4, dtype=np.float64))
    with pytest.raises(ValueError, match="floating-point"):
        TensorStats().update(np.ones(4, dtype=np.int32))
    with pytest.raises(ValueError, match="empty"):
        TensorStats().update(np.zeros((0, 3), dtype=np.float32))


@pytest.mark.parametrize("axis,shape", [(0, (8, 3, 5, 5)), (1, (2, 6, 300)), (-1, (4, 7, 6))])
def test_channel_min_max(axis, shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    s = TensorStats(axis=axis).update(x)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    np.testing.assert_array_equal(s.channel_min, moved.min(axis=1))
    np.testing.assert_array_equal(s.channel_max, moved.max(axis=1))
    per = compute_amax(s, "max", per_channel=True)
    np.testing.assert_allclose(per, np.abs(moved).max(axis=1))


def test_channel_count_change_is_an_error():
    s = TensorStats(axis=1).update(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        s.update(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        TensorStats(axis=3).update(np.ones((2, 4), dtype=np.float32))


def test_per_channel_needs_axis():
    with pytest.raises(ValueError, match="axis"):
        compute_amax(TensorStats().update(np.ones(4, dtype=np.float32)), "max", per_channel=True)


def test_thread_count_does_not_change_result():
    rng = np.random.default_rng(5)
    # 9M values: enough for the kernel to split into 4 threads (2M values each at least).
    x = (rng.standard_normal(9_000_000) * rng.uniform(0.1, 10)).astype(np.float32)
    x[::1000] = np.nan
    one = TensorStats().update(x, threads=1)
    two = TensorStats().update(x, threads=2)
    four = TensorStats().update(x, threads=4)
    assert one == two == four


def test_update_many_equals_individual_updates():
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (10, 1_000_000, 5000, 1)]
    many = [TensorStats() for _ in arrays]
    ptqengine.update_many(many, arrays, threads=2)
    for s, a in zip(many, arrays):
        assert s == TensorStats().update(a)
    with pytest.raises(ValueError):
        ptqengine.update_many(many, arrays[:2])


def test_round_trip_bytes_and_corruption():
    rng = np.random.default_rng(7)
    s = TensorStats(axis=0).update(rng.standard_normal((3, 100)).astype(np.float32))
    b = s.to_bytes()
    t = TensorStats.from_bytes(b)
    assert t == s and t.to_bytes() == b
    np.testing.assert_array_equal(t.channel_max, s.channel_max)
    with pytest.raises(ValueError, match="magic"):
        TensorStats.from_bytes(b"XXXX" + b[4:])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        TensorStats.from_bytes(b[:-5])
    with pytest.raises(ValueError, match="trailing"):
        TensorStats.from_bytes(b + b"\0")
    bad_exponent = bytearray(b)
    bad_exponent[20:24] = (5000).to_bytes(4, "little")  # magic, version, 3 ints, then the exponent
    with pytest.raises(ValueError, match="exponent"):
        TensorStats.from_bytes(bytes(bad_exponent))


def test_merge_rejects_different_configuration():
    with pytest.raises(ValueError):
        TensorStats(num_bins=2048).merge(TensorStats(num_bins=1024))
    with pytest.raises(ValueError, match="grid_bins"):
        TensorStats(num_bins=2048, grid_bins=3000)


@pytest.mark.parametrize("kwargs", [{"num_bins": 0}, {"num_bins": -5}, {"num_bins": 15},
                                    {"num_bins": 2**40}, {"grid_bins": 2**40}, {"axis": 2**31}])
def test_bad_construction_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        TensorStats(**kwargs)


def test_stats_bundle_file_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    tensors = {f"t{i}": TensorStats().update(rng.standard_normal(50).astype(np.float32)) for i in range(3)}
    path = tmp_path / "s.ptqs"
    ptqengine.save_stats(path, tensors, {"model": "m.onnx"})
    bundle = ptqengine.load_stats(path)
    assert list(bundle.tensors) == ["t0", "t1", "t2"]
    assert all(bundle.tensors[k] == tensors[k] for k in tensors)
    assert bundle.metadata == {"model": "m.onnx"}
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ptqengine.PtqError, match="truncated"):
        ptqengine.load_stats(path)
    with pytest.raises(ptqengine.PtqError, match="not found"):
        ptqengine.load_stats(tmp_path / "missing.ptqs")


def test_unknown_method_and_option_are_named():
    s = TensorStats().update(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="kl.*valid: max"):
        compute_amax(s, "kl")
    with pytest.raises(ValueError, match="'pct'"):
        compute_amax(s, "percentile", pct=99)
    with pytest.raises(ValueError, match="percentile must be"):
        compute_amax(s, "percentile", percentile=120)


# --- the bytes of version-2 statistics do not change --------------------------------------------------
def _hashed_values(n, seed, scale=1.0, dtype=np.float32):
    """Deterministic values from integer hashing only (no RNG stream, no libm), heavy-tailed."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x7F4A7C15)
    h = (i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0x5BD1E995)) & np.uint64(0xFFFFFFFF)
    u = h.astype(np.float64) / 2.0**32 * 2.0 - 1.0
    return (u * u * u * scale).astype(dtype)


def _golden_cases():
    growing = TensorStats()
    for k in range(6):
        growing.update(_hashed_values(50_000, 10 + k, scale=4.0 ** k))
    x = _hashed_values(3_000_000, 3, 7.5)
    x[::997], x[5::1999], x[7::3001] = np.nan, np.inf, -np.inf
    many = [TensorStats() for _ in range(3)]
    ptqengine.update_many(many, [_hashed_values(n, 20 + n) for n in (10, 300_000, 7)], threads=2)
    return {
        "small": TensorStats().update(_hashed_values(1000, 1)),
        "growing": growing,
        "big_nonfinite": TensorStats().update(x, threads=2),
        "f16": TensorStats(num_bins=512).update(_hashed_values(40_000, 4, 300.0, np.float16)),
        "axis1": TensorStats(axis=1).update(_hashed_values(4800, 5).reshape(2, 8, 300)),
        "axis_last": TensorStats(axis=-1).update(_hashed_values(168, 6).reshape(4, 7, 6)),
        "tiny": TensorStats(num_bins=128).update(_hashed_values(100, 7, 1e-39)),
        "huge": TensorStats(num_bins=128).update(_hashed_values(100, 8, 1e37)),
        "zeros": TensorStats().update(np.zeros(10, np.float32)),
        "empty": TensorStats(num_bins=64),
        **{f"many{k}": s for k, s in enumerate(many)},
    }


# SHA-256 of each case's bytes, taken from the build before the native boundary was hardened
# (main at 91dd219): saved statistics must read and compare equal across versions.
GOLDEN_SHA256 = {
    "small": "c23e74754a18c610a660e22fdf20679d2d4207f18ea10d3081bcf02eb7d38ec7",
    "growing": "82915dc9ebc934d01df120aae6442c1ca70d1702a69d42fe419656435f5242e0",
    "big_nonfinite": "d50e68c17c55d080993265161f25848f9d863480cd5b9c3f7cac6f51953f5e2a",
    "f16": "496ab9d5b4252224f0b602267ea41d0545e276eb1a297f30caeece0cc1035973",
    "axis1": "136932815db2e3b65d4578fad3d40f56f277bb802317d45d6e6a8361f5c916c7",
    "axis_last": "f4a30e58e60faf3697abf0f3f1b8e19870dc469bc5e26b7b3733c4d39e8a9d65",
    "tiny": "4337817447f9481e6c7b762304ee538e30374705378a80f773969cb8e3fb6be6",
    "huge": "1888c3fa6ee64478192747d22c14e9af329b41a77516494556e97d6cbfeadf00",
    "zeros": "201bf34a4cba6c965889f555d7d7563a0e474bca74a26af9b9bf5caf75316950",
    "empty": "b9b3ef79595f5c673306bc719ff5a5f41462d743d6c53b29b3fecf5428c956a0",
    "many0": "c91c337e267713de99616ac8018bd97ebd9c6f32afe878dd01d3ca77685e1994",
    "many1": "029509ef9565889bf4d56dd24803f71d2ff91e4b6ebbce6467541205ff7d3d6b",
    "many2": "b78f1c9dcaef3f66ab8915b47ad8c0f6b5f577ddfbc5016d51395959c8a417dc",
}


def test_statistics_bytes_are_unchanged():
    cases = _golden_cases()
    assert {k: hashlib.sha256(s.to_bytes()).hexdigest() for k, s in cases.items()} == GOLDEN_SHA256
    for s in cases.values():  # and every one reads back
        assert TensorStats.from_bytes(s.to_bytes()) == s
