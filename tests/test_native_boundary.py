"""The native boundary: argument checks in C++, dtypes by value, threads, the GIL, every update path.

Arguments are handed straight to the native core (ptqengine._core), skipping the Python wrapper,
because the core must stand on its own: a bad integer is a ValueError, never a crash.
"""
from __future__ import annotations

import functools
import pickle
import sys
import threading
import time

import numpy as np
import pytest

import naive_kernels as naive
import ptqengine
from ptqengine import TensorStats, _core
from ptqengine.algorithms import compute_amax

NO_AXIS = _core.NO_AXIS


@pytest.fixture(scope="module")
def stats():
    """Native statistics of 100,000 normal values (2048 search bins)."""
    return TensorStats().update(np.random.default_rng(0).standard_normal(100_000).astype(np.float32))._native


# --- every integer and range from Python is checked by the core --------------------------------------
BAD_CALLS = {
    "num_bins small": lambda s: _core.TensorStats(15, 64, NO_AXIS),
    "num_bins huge": lambda s: _core.TensorStats(2**40, 2**41, NO_AXIS),
    "grid_bins not pow2": lambda s: _core.TensorStats(16, 48, NO_AXIS),
    "grid_bins huge": lambda s: _core.TensorStats(16, 2**25, NO_AXIS),
    "grid_bins 2^40": lambda s: _core.TensorStats(16, 2**40, NO_AXIS),
    "axis beyond ndim": lambda s: _core.TensorStats(16, 32, 64),
    "axis 2^31": lambda s: _core.TensorStats(16, 32, 2**31),
    "threads negative": lambda s: _core.TensorStats(16, 32, NO_AXIS).update(np.ones(4, np.float32), -1),
    "threads huge": lambda s: _core.TensorStats(16, 32, NO_AXIS).update(np.ones(4, np.float32), 2**31),
    "update_many threads": lambda s: _core.update_many([s], [np.ones(4, np.float32)], -3),
    "update_many sizes": lambda s: _core.update_many([s, s], [np.ones(4, np.float32)], 1),
    "update_many None": lambda s: _core.update_many([None], [np.ones(4, np.float32)], 1),
    "stride 0": lambda s: s.amax_entropy(128, 128, 0, True),
    "stride negative": lambda s: s.amax_entropy(128, 128, -(2**40), True),
    "start_bin huge": lambda s: s.amax_entropy(128, 2**31 - 1, 1, True),
    "num_quantized_bins 0": lambda s: s.amax_entropy(0, 128, 1, True),
    "nq > start_bin": lambda s: s.amax_entropy(256, 128, 1, True),
    "mse num_bits 1": lambda s: s.amax_mse(1, 128),
    "mse num_bits 2^40": lambda s: s.amax_mse(2**40, 128),
    "mse start_bin": lambda s: s.amax_mse(8, 2048),
    "mse start_bin negative": lambda s: s.amax_mse(8, -1),
    "percentile 0": lambda s: s.amax_percentile(0.0),
    "percentile nan": lambda s: s.amax_percentile(float("nan")),
    "percentile > 100": lambda s: s.amax_percentile(100.01),
    "asym percentile inf": lambda s: s.asymmetric_range(float("inf"), 8, False),
    "asym num_bits": lambda s: s.asymmetric_range(99.0, 17, True),
    "search_histogram 0": lambda s: s.search_histogram(0),
    "search_histogram 2^31-1": lambda s: s.search_histogram(2**31 - 1),
    "entropy_curve empty": lambda s: _core.entropy_curve(np.zeros(0), 1, 1, 1),
    "entropy_curve nan": lambda s: _core.entropy_curve(np.array([1.0, np.nan]), 1, 1, 1),
    "entropy_bins negative": lambda s: _core.amax_entropy_bins(np.array([1.0, -1.0]), 1.0, 1, 1, 1),
    "entropy_bins width 0": lambda s: _core.amax_entropy_bins(np.ones(8), 0.0, 1, 1, 1),
    "entropy_bins stride 0": lambda s: _core.amax_entropy_bins(np.ones(8), 1.0, 1, 1, 0),
    "entropy_bins start > n": lambda s: _core.amax_entropy_bins(np.ones(8), 1.0, 1, 9, 1),
    "mse_bins too many": lambda s: _core.amax_mse_bins(np.ones(2**20 + 1), 1.0, 8, 0),
    "mse_bins width nan": lambda s: _core.amax_mse_bins(np.ones(8), float("nan"), 8, 0),
    "mse_bins start_bin": lambda s: _core.amax_mse_bins(np.ones(8), 1.0, 8, 8),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_raise_value_error(call, stats):
    with pytest.raises(ValueError):
        call(stats)


def test_huge_entropy_stride_is_one_candidate(stats):
    # i += stride used to overflow and index before the histogram: a segmentation fault.
    s = TensorStats._wrap(stats)
    one = compute_amax(s, "entropy", stride=2**31 - 1)
    assert one == compute_amax(s, "entropy", stride=2**40) == compute_amax(s, "entropy", stride=2048)
    assert one == pytest.approx(128 * s.absmax / 2048)  # the only candidate: start_bin
    curve = _core.entropy_curve(np.ones(256), 128, 128, 2**31 - 1)
    assert curve.shape == (1,)


# --- what arrays the core accepts ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_unpickled_arrays_are_accepted(dtype):
    x = np.linspace(-3, 5, 1001).astype(dtype)
    y = pickle.loads(pickle.dumps(x))
    assert y.dtype == x.dtype and y.dtype is not np.dtype(dtype)  # equal, not the same object
    direct = _core.TensorStats(2048, 65536, NO_AXIS)
    direct.update(y, 1)  # the binding itself, no Python wrapper in between
    assert direct.to_bytes() == TensorStats().update(x).to_bytes()


def test_unaligned_and_byte_swapped_input_equal_plain_input():
    x = np.random.default_rng(1).standard_normal(10_001).astype(np.float32)
    buf = bytearray(x.nbytes + 1)
    unaligned = np.frombuffer(buf, dtype=np.float32, offset=1)
    unaligned[:] = x
    assert not unaligned.flags.aligned
    reference = TensorStats().update(x)
    assert TensorStats().update(unaligned) == reference
    assert TensorStats().update(x.astype(">f4")) == reference
    with pytest.raises(ValueError, match="native byte order"):
        _core.TensorStats(2048, 65536, NO_AXIS).update(x.astype(">f4"), 1)


# --- every update path x threads x dtype x layout, against the naive twin ------------------------------
# 9M values: 4 threads get 2M+ each (the kernel's kMinPerThread); 3 x 8 channels of 375,000-value
# runs are split between threads as whole runs.
N = 9_000_000


@functools.lru_cache(maxsize=None)
def _data(path: str, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(N).astype(np.float32)
    x *= np.geomspace(0.01, 100.0, N, dtype=np.float32)  # the grid grows inside every thread's share
    if path == "scalar":  # a non-finite value in every 4096-value block
        x[::1000] = np.nan
    elif path == "mixed":  # both paths: a few blocks with NaN/Inf, the rest all finite
        x[1_234_567::2_000_003] = np.inf
        x[777::3_000_017] = np.nan
    return x.astype(dtype)


@functools.lru_cache(maxsize=None)
def _expected(path: str, dtype: str, axis):
    x = _data(path, dtype)
    return naive.update(x.reshape(3, 8, -1) if axis is not None else x, 65536, axis).key()


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "strided":  # a non-contiguous view of the same values, in the same order
        doubled = np.empty(2 * x.size, dtype=x.dtype)
        doubled[::2] = x
        view = doubled[::2]
        assert not view.flags.c_contiguous
        return view
    if layout == "channels":
        return x.reshape(3, 8, -1)
    return x


@pytest.fixture(scope="module", autouse=True)
def _release_cached_data():
    yield
    _data.cache_clear()  # 160 MB of arrays: not for the rest of the session
    _expected.cache_clear()


@pytest.mark.parametrize("layout", ["contiguous", "strided", "channels"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("path", ["vectorised", "scalar", "mixed"])
def test_update_paths_equal_naive_twin(path, threads, dtype, layout):
    axis = 1 if layout == "channels" else None
    x = _layout(_data(path, dtype), layout)
    s = TensorStats(axis=axis).update(x, threads=threads)
    got = naive.GridState(s._native.exponent, s._native.signed_counts(), s.count, s.nan_count,
                          s.inf_count, float(s._native.min), float(s._native.max),
                          *((s._native.channel_min(), s._native.channel_max()) if axis else ()))
    assert got.key() == _expected(path, dtype, axis)


# --- threads sharing objects ---------------------------------------------------------------------------
def _run_threads(*targets, timeout=120.0):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "deadlock"


def test_concurrent_updates_of_one_object_equal_a_single_thread():
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal(300_000) * 10.0 ** k).astype(np.float32) for k in range(-2, 4)]
    shared = TensorStats()
    _run_threads(*[functools.partial(shared.update, b, threads=2) for b in batches for _ in range(3)])
    sequential = TensorStats()
    for b in batches:
        for _ in range(3):
            sequential.update(b)
    assert shared == sequential and shared.count == 18 * 300_000


def test_update_many_with_one_object_several_times():
    rng = np.random.default_rng(3)
    arrays = [(rng.standard_normal(300_000) * 10.0 ** k).astype(np.float32) for k in range(6)]
    s, t = TensorStats(), TensorStats()
    ptqengine.update_many([s, t, s, t, s, s], arrays, threads=4)  # no tensor dominates
    assert s == TensorStats().update(arrays[0]).update(arrays[2]).update(arrays[4]).update(arrays[5])
    assert t == TensorStats().update(arrays[1]).update(arrays[3])


def test_merge_with_itself_doubles_the_counts():
    x = np.random.default_rng(4).standard_normal(5000).astype(np.float32)
    s = TensorStats(axis=0).update(x.reshape(5, 1000))
    s.merge(s)
    twice = TensorStats(axis=0).update(x.reshape(5, 1000)).update(x.reshape(5, 1000))
    assert s == twice


def test_merges_in_opposite_orders_do_not_deadlock():
    rng = np.random.default_rng(5)
    xa, xb = rng.standard_normal(20_000).astype(np.float32), rng.standard_normal(30_000).astype(np.float32)
    for _ in range(50):
        a, b = TensorStats().update(xa), TensorStats().update(xb)
        _run_threads(lambda: [a.merge(b) for _ in range(5)], lambda: [b.merge(a) for _ in range(5)])
        assert a.count >= 20_000 + 5 * 30_000 and b.count >= 30_000 + 5 * 20_000
        TensorStats.from_bytes(a.to_bytes())  # still consistent: passes the invariant checks


# --- heavy calls release the GIL --------------------------------------------------------------------
def _python_runs_during(call) -> bool:
    """True if this thread ran Python code in the middle of call() running in another thread."""
    times = {}

    def worker():
        times["start"] = time.perf_counter()
        call()
        times["end"] = time.perf_counter()

    stamps = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        t = threading.Thread(target=worker)
        t.start()
        while t.is_alive():
            stamps.append(time.perf_counter())
        t.join()
    finally:
        sys.setswitchinterval(old)
    span = times["end"] - times["start"]
    assert span > 0.01, f"the workload took {span:.3f} s: too short to tell"
    lo, hi = times["start"] + 0.2 * span, times["end"] - 0.2 * span
    return any(lo < s < hi for s in stamps)


def _heavy_call(name: str):
    """One heavy call, its inputs prepared here so that only the call itself is timed."""
    x = np.random.default_rng(6).uniform(-1, 1, 1 << 22).astype(np.float32)
    if name == "mse":  # O(num_bins^2)
        fine = TensorStats(num_bins=16384, grid_bins=32768).update(x)
        return lambda: compute_amax(fine, "mse", start_bin=128)
    # A 2^22-bin grid with millions of non-empty bins: heavy to copy, encode and re-bin.
    big = TensorStats(num_bins=2048, grid_bins=1 << 22).update(x)
    blob, other = big.to_bytes(), big.copy()
    return {"merge": lambda: other.merge(big), "to_bytes": big.to_bytes,
            "from_bytes": lambda: TensorStats.from_bytes(blob),
            "search_histogram": lambda: big.search_histogram(1 << 20)}[name]


@pytest.mark.parametrize("name", ["merge", "to_bytes", "from_bytes", "search_histogram", "mse"])
def test_heavy_calls_release_the_gil(name):
    assert _python_runs_during(_heavy_call(name))


# --- counts made elsewhere (the GPU paths) are checked before they are folded in -------------------------
def _part(s: TensorStats) -> dict:
    n = s._native
    part = dict(exponent=n.exponent, counts=n.signed_counts(), count=n.count, nan_count=n.nan_count,
                inf_count=n.inf_count, min=n.min, max=n.max)
    if s.axis is not None:
        part.update(channel_min=n.channel_min(), channel_max=n.channel_max())
    return part


@pytest.mark.parametrize("axis", [None, 1])
def test_absorb_counts_equals_merge(axis):
    rng = np.random.default_rng(8)
    a, b = (rng.standard_normal((4, 6, 300)).astype(np.float32) * k for k in (1, 30))
    b[0, 0, :5] = np.nan
    merged = TensorStats(axis=axis).update(a).merge(TensorStats(axis=axis).update(b))
    absorbed = TensorStats(axis=axis).update(a)
    absorbed._native.absorb_counts(**_part(TensorStats(axis=axis).update(b)))
    assert absorbed == merged


BAD_PARTS = {
    "counts of another grid": lambda p: p.update(counts=p["counts"][:-2]),
    "nan + inf > count": lambda p: p.update(nan_count=p["count"], inf_count=1),
    "counts do not sum to the finite count": lambda p: p.update(count=p["count"] + 1),
    "exponent 2^40": lambda p: p.update(exponent=2**40),
    "grid too small for max": lambda p: p.update(exponent=p["exponent"] - 1),
    "min above max": lambda p: p.update(min=p["max"] + 1),
    "max NaN": lambda p: p.update(max=float("nan")),
    "channels without an axis": lambda p: p.update(channel_min=np.zeros(2, np.float32),
                                                   channel_max=np.zeros(2, np.float32)),
}


@pytest.mark.parametrize("spoil", BAD_PARTS.values(), ids=BAD_PARTS.keys())
def test_inconsistent_counts_are_refused_and_change_nothing(spoil):
    rng = np.random.default_rng(9)
    target = TensorStats().update(rng.standard_normal(1000).astype(np.float32))
    before = target.to_bytes()
    part = _part(TensorStats().update(rng.standard_normal(500).astype(np.float32) * 3))
    spoil(part)
    with pytest.raises(ValueError):
        target._native.absorb_counts(**part)
    assert target.to_bytes() == before


def test_per_channel_counts_need_matching_channels():
    x = np.ones((2, 3, 4), np.float32)
    part = _part(TensorStats(axis=1).update(x))
    with pytest.raises(ValueError, match="per-channel"):
        TensorStats(axis=1)._native.absorb_counts(**{**part, "channel_min": None, "channel_max": None})
    with pytest.raises(ValueError, match="one size"):
        TensorStats(axis=1)._native.absorb_counts(**{**part, "channel_max": part["channel_max"][:2]})
    with pytest.raises(ValueError, match="channels"):
        TensorStats(axis=1).update(np.ones((2, 5, 4), np.float32))._native.absorb_counts(**part)
