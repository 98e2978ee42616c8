"""CUDA statistics equal CPU statistics bit for bit, through both device paths: the set kernels
(ptqengine.gpu: CuPy + NVRTC, what TensorStats.update(gpu_array) uses when CuPy is installed) and the
extension's own kernels (built by nvcc, TensorStats.update_device_legacy). Each test is gated on what it
needs, and a skip says what is missing: a pip-installed GPU host (CuPy, no nvcc at build time) runs the
set-kernel cases. Without a GPU (CI) only the host-side checks run."""
from typing import Dict, Sequence

import numpy as np
import pytest

from ptqengine import TensorStats, _core
from ptqengine.algorithms import compute_amax

MISSING = {  # what a test may need -> how its absence reads in a skip reason
    "cupy": "CuPy cannot be imported (pip install '.[gpu]')",
    "gpu": "no CUDA GPU is visible",
    "nvcc_kernels": "the extension was built without its nvcc kernels (_core.cuda_built is False)",
}
SET_KERNELS = ("cupy", "gpu")                   # CuPy compiles them with NVRTC at run time
LEGACY_KERNELS = ("nvcc_kernels", "cupy", "gpu")  # CuPy only puts the test data on the device


def machine_facts() -> Dict[str, bool]:
    facts = {"cupy": False, "gpu": bool(_core.cuda_available()), "nvcc_kernels": bool(_core.cuda_built)}
    try:
        import cupy
    except Exception:  # not installed, or a broken CUDA library set
        return facts
    facts["cupy"] = True
    try:
        facts["gpu"] = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver
        pass
    return facts


def why_not(needs: Sequence[str], facts: Dict[str, bool]) -> str:
    """Why a test that needs `needs` cannot run where `facts` hold ('' when it can)."""
    return "; ".join(MISSING[n] for n in needs if not facts[n])


FACTS = machine_facts()


def needs(*what: str):
    why = why_not(what, FACTS)
    return pytest.mark.skipif(bool(why), reason=f"needs {' + '.join(what)}: {why}")


def test_gates_follow_what_each_path_needs():
    """The gate that hid these tests: nvcc kernels were required even for the set kernels, which need none."""
    pip_gpu_host = {"cupy": True, "gpu": True, "nvcc_kernels": False}
    assert why_not(SET_KERNELS, pip_gpu_host) == ""
    assert why_not(LEGACY_KERNELS, pip_gpu_host) == MISSING["nvcc_kernels"]
    built_here = {"cupy": False, "gpu": False, "nvcc_kernels": True}
    assert why_not(SET_KERNELS, built_here) == f"{MISSING['cupy']}; {MISSING['gpu']}"
    assert why_not(LEGACY_KERNELS, {**built_here, "cupy": True, "gpu": True}) == ""


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


def _update(path: str):
    """TensorStats -> its update on a device array through `path`."""
    return {"set": TensorStats.update, "legacy": TensorStats.update_device_legacy}[path]


DEVICE_PATHS = pytest.mark.parametrize("path", [pytest.param("set", marks=needs(*SET_KERNELS)),
                                                pytest.param("legacy", marks=needs(*LEGACY_KERNELS))])


@DEVICE_PATHS
@pytest.mark.parametrize("kind", ["gauss", "relu", "specials", "tiny", "zeros", "half"])
def test_gpu_stats_equal_cpu_stats(kind, path):
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
    gpu_stats = _update(path)(TensorStats(), cp.asarray(x))
    assert gpu_stats.to_bytes() == cpu.to_bytes()


@DEVICE_PATHS
def test_gpu_and_cpu_batches_merge_like_one_pass(path):
    import cupy as cp

    rng = np.random.default_rng(22)
    a = rng.standard_normal(500_000).astype(np.float32)
    b = (rng.standard_normal(500_000) * 40).astype(np.float32)  # grows the grid
    update = _update(path)
    mixed = update(update(TensorStats(), cp.asarray(a)).update(b), cp.asarray(b * 0.5))
    host = TensorStats().update(a).update(b).update(b * 0.5)
    assert mixed == host
    assert compute_amax(mixed, "entropy") == compute_amax(host, "entropy")


# --- update_device takes a bare address: the core checks it before any kernel reads it ---------------
@needs("nvcc_kernels")
@pytest.mark.parametrize("pointer, size, is_half, message", [
    (256, 0, False, "empty array"),
    (256, -8, True, "empty array"),
    (0, 4, False, "null"),
    (258, 4, False, "not aligned to its 4-byte values"),
    (257, 4, True, "not aligned to its 2-byte values"),
    (256, 2**62, False, "run past the address space"),  # 2^64 bytes: the byte count overflows
    (2**64 - 8, 2, False, "run past the address space"),  # the end overflows
])
def test_legacy_update_checks_its_arguments_before_any_cuda_call(pointer, size, is_half, message):
    """Host arithmetic in the core (stats_cuda.h), so it is checked wherever the kernels were built."""
    with pytest.raises(ValueError, match=message) as error:
        _core.TensorStats(2048, 4096, _core.NO_AXIS).update_device(pointer, size, is_half)
    assert "\n" not in str(error.value)


@needs(*LEGACY_KERNELS)
def test_legacy_update_refuses_memory_it_cannot_read_and_the_context_survives():
    import cupy as cp

    x = cp.arange(1000, dtype=cp.float32)
    host = np.ones(1000, dtype=np.float32)
    native = _core.TensorStats(2048, 4096, _core.NO_AXIS)
    with pytest.raises(ValueError, match="not memory of the current CUDA device"):
        native.update_device(host.ctypes.data, host.size, False)
    with pytest.raises(ValueError, match="not memory of the current CUDA device"):
        native.update_device(4096, 4, False)
    with pytest.raises(ValueError, match="run past the memory allocated there"):
        native.update_device(x.data.ptr, 2**40, False)  # 4 TiB from a 4 KB array
    assert TensorStats().update_device_legacy(x) == TensorStats().update(cp.asnumpy(x))  # nothing was broken
