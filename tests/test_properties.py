"""Order and split independence, bit for bit: the property that makes sharded calibration exact."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ptqengine import TensorStats, merge_all
from ptqengine.algorithms import compute_amax

floats = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
# float32 x float32 stays float32 under NumPy 1.x promotion too (a float32 ** int is float64 there).
finite_scaled = st.builds(
    lambda x, e: np.float32(np.float32(x) * np.float32(2.0 ** e)),
    st.floats(-1, 1, width=32), st.integers(-30, 30))
element = st.one_of(floats, finite_scaled, st.just(np.float32(0.0)), st.just(np.float32(-0.0)))
batches = st.lists(arrays(np.float32, st.integers(1, 300), elements=element), min_size=1, max_size=6)

# num_bins=128 keeps the examples quick, so the searches start at bin 32 with 32 levels.
METHODS = [("max", {}), ("percentile", {"percentile": 99.9}),
           ("entropy", {"num_quantized_bins": 32, "start_bin": 32}), ("mse", {"start_bin": 32}),
           ("minmax_asym", {}), ("percentile_asym", {"percentile": 99.0})]


def run(batches, num_bins=128):
    s = TensorStats(num_bins=num_bins)
    for b in batches:
        s.update(b)
    return s


def amaxes(s):
    return [compute_amax(s, m, **o) for m, o in METHODS]


@settings(max_examples=150, deadline=None)
@given(batches, st.randoms(use_true_random=False))
def test_order_and_split_independent(batches, rnd):
    forward = run(batches)
    shuffled = list(batches)
    rnd.shuffle(shuffled)
    backward = run(shuffled)
    # Split: every batch cut at a random point, the pieces in separate stats merged in reverse.
    pieces = []
    for b in batches:
        cut = rnd.randint(0, len(b))
        pieces += [b[:cut], b[cut:]]
    parts = [TensorStats(num_bins=128).update(p) for p in reversed(pieces) if len(p)]
    merged = merge_all(parts)
    one_shot = TensorStats(num_bins=128).update(np.concatenate(batches))
    assert forward.to_bytes() == backward.to_bytes() == merged.to_bytes() == one_shot.to_bytes()
    a = amaxes(forward)
    assert a == amaxes(merged)
    assert repr(a) == repr(amaxes(backward))  # NaN-safe equality


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1e6, 1e6, width=32)),
       st.integers(1, 4))
def test_merge_is_commutative_and_associative(x, k):
    chunks = np.array_split(x, k + 1)
    s = [TensorStats().update(c) for c in chunks if c.size]
    left = merge_all(s)
    right = merge_all(reversed(s))
    assert left == right == TensorStats().update(x)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 40)),
              elements=st.floats(-100, 100, width=32)))
def test_per_channel_merge_equals_one_pass(x):
    whole = TensorStats(axis=1).update(x)
    halves = [TensorStats(axis=1).update(h) for h in np.array_split(x, 2, axis=0) if h.size]
    assert merge_all(halves) == whole
