"""Native scale searches against the plain-NumPy transcriptions in tests/reference.py."""
import numpy as np
import pytest

import reference as ref
from ptqengine import TensorStats
from ptqengine.algorithms import amax_from_histogram, entropy_curve, symmetric_scale
from ptqengine.algorithms import compute_amax


def distributions():
    rng = np.random.default_rng(11)
    yield "gauss", rng.standard_normal(200_000).astype(np.float32)
    yield "relu", np.maximum(rng.standard_normal(200_000) * 2, 0).astype(np.float32)
    yield "laplace", rng.laplace(size=200_000).astype(np.float32)
    yield "outliers", np.concatenate([rng.standard_normal(200_000), [40.0, -55.0]]).astype(np.float32)
    yield "uniform", rng.uniform(-3, 3, 100_000).astype(np.float32)
    yield "sparse", (rng.standard_normal(50_000) * (rng.random(50_000) < 0.05)).astype(np.float32)


CASES = list(distributions())
IDS = [name for name, _ in CASES]


@pytest.mark.parametrize("name,x", CASES, ids=IDS)
def test_entropy_curve_matches_reference_on_the_same_histogram(name, x):
    bins, _ = ref.abs_histogram(x)
    native = entropy_curve(bins)
    expected = ref.entropy_curve(bins)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(native), finite)
    np.testing.assert_allclose(native[finite], expected[finite], rtol=1e-9, atol=1e-12)


def kl(p, q):
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    return float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))


def test_entropy_of_the_worked_example_in_migacz_slides():
    """Migacz, "8-bit Inference with TensorRT" (GTC 2017): P = [1, 0, 2, 3, 5, 3, 1, 7] quantised into 2
    levels gives [6, 16], expanded over each level's non-empty bins (3 and 4 of them) to
    Q = [2, 0, 2, 2, 4, 4, 4, 4]. One candidate (i = 8, no outliers)."""
    native = entropy_curve(np.array([1, 0, 2, 3, 5, 3, 1, 7], float), num_quantized_bins=2, start_bin=8)
    assert native.shape == (1,)
    assert native[0] == pytest.approx(kl([1, 0, 2, 3, 5, 3, 1, 7], [2, 0, 2, 2, 4, 4, 4, 4]), rel=1e-12)


def test_which_bins_of_q_stay_empty_is_the_folded_p_convention():
    """Candidate i = 4 of [4, 2, 3, 0, 1] (2 levels): its last bin is empty but takes the outlier, P = [4, 2, 3, 1].
    With Q empty where P is (MXNet, onnxruntime, ours) level 1 spreads 3 over two bins: Q = [3, 3, 1.5, 1.5].
    With Q empty where bins[:i] is (ModelOpt), Q = [3, 3, 3, 0] meets P = 1: KL is infinite, the candidate
    cannot win. Candidate i = 5 has no outliers, so both read it alike: Q = [3, 3, 3, 0, 1]."""
    bins = np.array([4, 2, 3, 0, 1], float)
    native = entropy_curve(bins, num_quantized_bins=2, start_bin=4)
    expected = [kl([4, 2, 3, 1], [3, 3, 1.5, 1.5]), kl([4, 2, 3, 0, 1], [3, 3, 3, 0, 1])]
    np.testing.assert_allclose(native, expected, rtol=1e-12)
    np.testing.assert_allclose(ref.entropy_curve(bins, 2, 4, zero_mask="folded"), expected, rtol=1e-12)
    assert ref.entropy_curve(bins, 2, 4, zero_mask="unfolded").tolist() == [np.inf, pytest.approx(expected[1])]


@pytest.mark.parametrize("name,x", CASES, ids=IDS)
def test_entropy_and_mse_on_the_same_histogram_within_one_bin(name, x):
    bins, amax = ref.abs_histogram(x)
    width = amax / len(bins)
    assert abs(amax_from_histogram(bins, width, "entropy") - ref.entropy_amax(x)) <= width
    assert abs(amax_from_histogram(bins, width, "mse") - ref.mse_amax(x)) <= width


@pytest.mark.parametrize("name,x", CASES, ids=IDS)
def test_stats_searches_track_reference(name, x):
    s = TensorStats().update(x)
    amax = float(np.abs(x).max())
    width = amax / 2048
    assert compute_amax(s, "max") == amax
    for p in (99.0, 99.99, 99.999):
        got = compute_amax(s, "percentile", percentile=p)
        want = ref.percentile_amax(x, p)
        # Grid edge above the exact order statistic, at most one grid bin (finer than a search bin).
        assert want <= got + 1e-9 and got - want <= width
    assert abs(compute_amax(s, "mse") - ref.mse_amax(x)) <= 2 * width
    # Entropy: the search histogram is re-binned from the exact grid, so near-flat KL curves may move
    # the minimum a little (REFERENCES.md: parity measurement); 2% is the accepted tolerance.
    for zero_bin in ("keep", "neighbour"):
        assert compute_amax(s, "entropy", zero_bin=zero_bin) == pytest.approx(
            ref.entropy_amax(x, zero_bin=zero_bin), rel=0.02), zero_bin


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("num_bits", [8, 16])
def test_asymmetric_minmax_matches_reference(signed, num_bits):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(10_000) * 3 + 1).astype(np.float32)
    r = compute_amax(TensorStats().update(x), "minmax_asym", num_bits=num_bits, signed=signed)
    lo, hi, scale, zp = ref.asymmetric_range(x, num_bits, signed)
    assert (r.lo, r.hi) == (lo, hi)
    assert r.scale == pytest.approx(scale, rel=1e-12) and r.zero_point == zp
    assert r.qmax - r.qmin == 2 ** num_bits - 1


def test_asymmetric_percentile_close_to_reference():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.standard_normal(100_000), [30.0, -25.0]]).astype(np.float32)
    r = compute_amax(TensorStats().update(x), "percentile_asym", percentile=99.9)
    lo, hi, _, _ = ref.asymmetric_range(x, percentile=99.9)
    width = 30.0 / 2048
    assert abs(r.lo - lo) <= width and abs(r.hi - hi) <= width
    assert r.hi < 30.0 and r.lo > -25.0


def test_entropy_clips_a_sparse_tail_and_max_does_not():
    rng = np.random.default_rng(14)
    # Bulk N(0,1) plus 300 values spread over [5, 50]: a sparse tail that costs int8 resolution.
    x = np.concatenate([rng.standard_normal(500_000), rng.uniform(5, 50, 300)]).astype(np.float32)
    s = TensorStats().update(x)
    assert compute_amax(s, "max") == pytest.approx(np.abs(x).max())
    assert 3.0 < compute_amax(s, "entropy") < 10.0
    assert compute_amax(s, "percentile", percentile=99.0) < 4.0


def test_entropy_threshold_is_not_the_first_candidate():
    # Regression: building Q from the folded P makes candidate i = 128 lossless (KL = 0), so it
    # always won. On N(0,1) the documented method clips near 4.5 sigma.
    x = np.random.default_rng(15).standard_normal(1_000_000).astype(np.float32)
    s = TensorStats().update(x)
    amax = compute_amax(s, "entropy", zero_bin="keep")
    assert amax > 0.5 * float(np.abs(x).max())
    assert 3.5 < amax < float(np.abs(x).max())
    curve = entropy_curve(s.search_histogram()[0])
    assert curve[0] > curve[np.isfinite(curve)].min()


def test_entropy_zero_bin_mode_matters_on_relu_outputs():
    # Half exact zeros: read literally, the zero spike dominates KL and the search clips hard.
    x = np.maximum(np.random.default_rng(16).standard_normal(1_000_000), 0).astype(np.float32)
    s = TensorStats().update(x)
    keep, neighbour = compute_amax(s, "entropy", zero_bin="keep"), compute_amax(s, "entropy")
    assert neighbour == compute_amax(s, "entropy", zero_bin="neighbour")
    assert keep < 0.6 * neighbour
    assert neighbour == pytest.approx(ref.entropy_amax(x, zero_bin="neighbour"), rel=0.02)
    with pytest.raises(ValueError, match="zero_bin"):
        compute_amax(s, "entropy", zero_bin="drop")


def test_symmetric_scale():
    assert symmetric_scale(127.0) == 1.0
    assert symmetric_scale(32767.0, num_bits=16) == 1.0
