"""TensorStats: counts, min/max, histograms, per-channel, serialisation, edge cases."""
import numpy as np
import pytest

import ptqengine
from ptqengine import TensorStats, _core


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
    assert s.compute_amax("max") == 2.0


def test_only_nonfinite_values():
    s = TensorStats().update(np.array([np.nan, np.inf], dtype=np.float32))
    assert np.isnan(s.min) and np.isnan(s.absmax)
    assert s.compute_amax("entropy") == 0.0 and s.compute_amax("max") == 0.0


@pytest.mark.parametrize("value", [0.0, 3.5, -7.25])
def test_constant_and_zero_arrays(value):
    x = np.full((64, 64), value, dtype=np.float32)
    s = TensorStats().update(x)
    assert s.min == s.max == value
    for method in ("max", "percentile", "entropy", "mse"):
        amax = s.compute_amax(method)
        assert 0.0 <= amax <= abs(value) + 1e-12
    assert s.compute_amax("max") == abs(value)


def test_single_element_and_0d():
    s = TensorStats().update(np.float32(4.0))  # 0-d
    assert s.count == 1 and s.absmax == 4.0
    s.update(np.array([-5.0], dtype=np.float32))
    assert s.absmax == 5.0 and s.count == 2


def test_only_negative_values():
    x = -np.linspace(0.1, 9.0, 1000, dtype=np.float32)
    s = TensorStats().update(x)
    assert s.max < 0 and s.min == np.float32(-9.0)
    assert s.compute_amax("max") == pytest.approx(9.0)
    r = s.compute_amax("minmax_asym", num_bits=8, signed=False)
    assert r.hi == 0.0 and r.lo == pytest.approx(-9.0) and r.zero_point == 255


def test_huge_and_subnormal_magnitudes():
    x = np.array([1e30, -3e29, 1e-40, -1e-44, 0.0], dtype=np.float32)
    s = TensorStats().update(x)
    assert s.absmax == np.float32(1e30) and s.min == np.float32(-3e29)
    assert s.compute_amax("percentile", percentile=100.0) == np.float32(1e30)
    tiny = np.array([1e-40, -2e-40, 3e-42], dtype=np.float32)  # all subnormal
    t = TensorStats().update(tiny)
    assert t.absmax == np.float32(2e-40)
    assert t.histogram.sum() == 3
    assert 0 < t.compute_amax("entropy") <= np.float32(2e-40) * (1 + 1e-6)


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
    per = s.compute_amax("max", per_channel=True)
    np.testing.assert_allclose(per, np.abs(moved).max(axis=1))


def test_channel_count_change_is_an_error():
    s = TensorStats(axis=1).update(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        s.update(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        TensorStats(axis=3).update(np.ones((2, 4), dtype=np.float32))


def test_per_channel_needs_axis():
    with pytest.raises(ValueError, match="axis"):
        TensorStats().update(np.ones(4, dtype=np.float32)).compute_amax("max", per_channel=True)


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
        s.compute_amax("kl")
    with pytest.raises(ValueError, match="'pct'"):
        s.compute_amax("percentile", pct=99)
    with pytest.raises(ValueError, match="percentile must be"):
        s.compute_amax("percentile", percentile=120)
