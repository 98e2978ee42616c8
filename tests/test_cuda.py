"""CUDA statistics equal CPU statistics bit for bit. Runs where a GPU and CuPy are present; on
machines without them (CI) these cases are skipped, and the build-only facts are still checked."""
import importlib.util

import numpy as np
import pytest

from ptqengine import TensorStats, _core
from ptqengine.algorithms import compute_amax

HAS_GPU = bool(_core.cuda_available()) and importlib.util.find_spec("cupy") is not None
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and CuPy")


def test_cuda_flags_are_consistent():
    assert isinstance(_core.cuda_built, bool)
    if not _core.cuda_built:
        assert _core.cuda_available() is False


class FakeDeviceArray:
    """Only the interface: lets the host-side checks run without a GPU."""

    def __init__(self, typestr="<f4", shape=(4,), strides=None):
        self.__cuda_array_interface__ = {"typestr": typestr, "shape": shape, "strides": strides,
                                         "data": (256, False), "version": 3}


def test_device_arrays_are_validated_before_any_cuda_call():
    with pytest.raises(ValueError, match="float32 or float16"):
        TensorStats().update(FakeDeviceArray("<f8"))
    with pytest.raises(ValueError, match="C-contiguous"):
        TensorStats().update(FakeDeviceArray(shape=(2, 2), strides=(4, 8)))
    with pytest.raises(ValueError, match="empty"):
        TensorStats().update(FakeDeviceArray(shape=(0, 3)))
    with pytest.raises(ValueError, match="per-channel"):
        TensorStats(axis=0).update_device_legacy(FakeDeviceArray())


@pytest.mark.skipif(_core.cuda_built, reason="only meaningful for a build without CUDA")
def test_cpu_only_build_says_so():
    with pytest.raises(ValueError, match="without CUDA"):
        TensorStats().update_device_legacy(FakeDeviceArray())


@gpu
@pytest.mark.parametrize("kind", ["gauss", "relu", "specials", "tiny", "zeros", "half"])
def test_gpu_stats_equal_cpu_stats(kind):
    import cupy as cp

    rng = np.random.default_rng(21)
    x = {
        "gauss": rng.standard_normal(3_000_001).astype(np.float32) * 7,
        "relu": np.maximum(rng.standard_normal(2_000_000), 0).astype(np.float32),
        "specials": np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30, -1e-40, 3.0], dtype=np.float32),
        "tiny": (rng.standard_normal(10_000) * 1e-39).astype(np.float32),
        "zeros": np.zeros(100_000, dtype=np.float32),
        "half": (rng.standard_normal(1_000_000) * 100).astype(np.float16),
    }[kind]
    cpu = TensorStats().update(x)
    gpu_stats = TensorStats().update(cp.asarray(x))
    assert gpu_stats.to_bytes() == cpu.to_bytes()


@gpu
def test_gpu_and_cpu_batches_merge_like_one_pass():
    import cupy as cp

    rng = np.random.default_rng(22)
    a = rng.standard_normal(500_000).astype(np.float32)
    b = (rng.standard_normal(500_000) * 40).astype(np.float32)  # grows the grid
    mixed = TensorStats().update(cp.asarray(a)).update(b).update(cp.asarray(b * 0.5))
    host = TensorStats().update(a).update(b).update(b * 0.5)
    assert mixed == host
    assert compute_amax(mixed, "entropy") == compute_amax(host, "entropy")
