"""Statistics on the GPU (ptqengine.gpu) equal the CPU's TensorStats bit for bit.

Without a GPU: the kernels' decision code (csrc/cuda/stats_logic.h, csrc/binning.h) runs in a
CPU emulation of the four launches (tests/native/device_emulator.cpp) on the cases of
gpu_cases.py; the bit-pattern binning is checked against the CPU's double-precision path over
whole ranges of bit patterns; the kernel source is compiled by NVRTC (when the nvidia-cuda-nvrtc
wheel is installed) and nvcc (when present); inputs, errors and layouts are checked on the host.
With CuPy and a GPU: the same cases through DeviceStatsSet and TensorStats.update.
"""
from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from device_emulation import ROOT, EmulatedStatsSet, build, cxx
from gpu_cases import CASES, cpu_expected, make, rebatch
from ptqengine import TensorStats, _core
from ptqengine.errors import OptionError
from ptqengine.gpu import DeviceTensor, device_index, gpu_status
from ptqengine.gpu.kernels import KERNEL_FILES, LaunchConfig, kernel_code, nvrtc_options, source_dirs
from ptqengine.gpu.layout import STATE_DTYPE, WORK_DTYPE, float_keys, keys_to_float
from ptqengine.gpu.tensors import describe
from ptqengine.gpu.worklist import MAX_BLOCK_ELEMENTS, grid_blocks, normalize_specs, plan_update


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


HAS_GPU = _gpu_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU")
needs_cxx = pytest.mark.skipif(cxx() is None, reason="needs a C++ compiler")


def assert_same(got: TensorStats, want: TensorStats, what: str) -> None:
    """Bytes equal, or a message that says where they differ first."""
    if got.to_bytes() == want.to_bytes():
        return
    g, w = got._native, want._native
    for field in ("exponent", "count", "nan_count", "inf_count", "min", "max"):
        assert getattr(g, field) == getattr(w, field), f"{what}: {field} {getattr(g, field)} != {getattr(w, field)}"
    gc, wc = g.signed_counts(), w.signed_counts()
    bad = np.flatnonzero(gc != wc)
    assert bad.size == 0, (f"{what}: {bad.size} signed bins differ, first {bad[0]}: {gc[bad[0]]} != "
                           f"{wc[bad[0]]} (grid {got.grid_bins}, exponent {g.exponent})")
    np.testing.assert_array_equal(g.channel_min(), w.channel_min(), err_msg=f"{what}: channel_min")
    np.testing.assert_array_equal(g.channel_max(), w.channel_max(), err_msg=f"{what}: channel_max")
    raise AssertionError(f"{what}: bytes differ")


def assert_all_same(got, want, case: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, f"{case} tensor {i}")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    if cxx() is None:
        pytest.skip("needs a C++ compiler")
    out = tmp_path_factory.mktemp("native")
    return types.SimpleNamespace(emulator=build("device_emulator.cpp", out), proof=build("binning_proof.cpp", out))


# --- the bit-pattern functions against the CPU's -------------------------------------------------
def test_bit_pattern_binning_equals_the_cpu_double_path(native):
    run = subprocess.run([str(native.proof)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr


def test_device_structs_have_the_numpy_layout(native):
    lines = subprocess.run([str(native.emulator), "layout"], capture_output=True, text=True, check=True).stdout
    layout = dict(line.rsplit(" ", 1) for line in lines.splitlines())
    assert int(layout["TensorState"]) == STATE_DTYPE.itemsize
    assert int(layout["WorkEntry"]) == WORK_DTYPE.itemsize
    for struct, dtype in (("TensorState", STATE_DTYPE), ("WorkEntry", WORK_DTYPE)):
        for name, (_, offset) in dtype.fields.items():
            if name != "reserved":
                assert int(layout[f"{struct}.{name}"]) == offset, f"{struct}.{name}"


def test_order_keys_sort_like_floats_and_read_back():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-45, 38, 10_000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38], np.float32)])
    x = x.astype(np.float32)
    keys = float_keys(x)
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(x[order]) >= 0)  # keys order like the values (-0 just below +0)
    back = keys_to_float(keys)
    np.testing.assert_array_equal(back, x + np.float32(0))
    assert not np.signbit(keys_to_float(float_keys(np.array([-0.0], np.float32))))[0]


# --- the kernels' decisions, emulated on the CPU -------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_emulated_device_statistics_equal_cpu_statistics(case, native, tmp_path):
    specs, batches = make(case)
    stats = EmulatedStatsSet(specs, native.emulator, tmp_path, blocks=5, threads=64, capacity=4096)
    for batch in batches:
        stats.update(batch)
    assert_all_same(stats.to_host(), cpu_expected(specs, batches), case)


def test_emulated_cases_take_every_route(native, tmp_path):
    routes = {}
    for case in ("relu6", "clipped", "specials", "many"):
        specs, batches = make(case)
        stats = EmulatedStatsSet(specs, native.emulator, tmp_path, blocks=3, threads=32, capacity=1024)
        for batch in batches:
            stats.update(batch)
        for name, n in stats.routes.items():
            routes[name] = routes.get(name, 0) + n
    assert set(routes) == {"zero", "window", "hot_pos", "hot_neg", "global", "nonfinite"}
    assert all(n > 0 for n in routes.values()), routes


@pytest.mark.parametrize("geometry", [
    dict(blocks=1, threads=32, capacity=0),                       # no window: every value global
    dict(blocks=13, threads=96, capacity=64, values_per_bin=1),   # tiny window, odd thread count
    dict(blocks=300, threads=1024, capacity=57344),               # the H200 geometry, many blocks
    dict(blocks=7, threads=64, capacity=4096, misalign=1),        # unaligned starts: head and tail
    dict(blocks=4, threads=128, capacity=2048, misalign=3),
])
@pytest.mark.parametrize("case", ["many", "growth", "per_channel"])
def test_emulated_statistics_do_not_depend_on_launch_geometry(case, geometry, native, tmp_path):
    specs, batches = make(case, seed=5)
    stats = EmulatedStatsSet(specs, native.emulator, tmp_path, **geometry)
    for batch in batches:
        stats.update(batch)
    assert_all_same(stats.to_host(), cpu_expected(specs, batches), f"{case} {geometry}")


@pytest.mark.parametrize("case", ["growth", "many", "specials", "half"])
def test_emulated_statistics_do_not_depend_on_batch_order_or_split(case, native, tmp_path):
    specs, batches = make(case, seed=8)
    expected = cpu_expected(specs, batches)
    order = list(range(len(batches)))[::-1]
    stats = EmulatedStatsSet(specs, native.emulator, tmp_path, blocks=9, threads=64, capacity=2048)
    for batch in rebatch(specs, batches, order, parts=3):
        stats.update(batch)
    assert_all_same(stats.to_host(), expected, case)


# --- inputs and the work table (host only) -------------------------------------------------------
class FakeArray:
    def __init__(self, typestr="<f4", shape=(4,), strides=None, ptr=4096, **extra):
        self.__cuda_array_interface__ = {"typestr": typestr, "shape": shape, "strides": strides,
                                         "data": (ptr, False), "version": 3, **extra}


def test_inputs_are_checked_with_one_line_errors():
    with pytest.raises(ValueError, match="act: expected a float32 or float16 GPU array, got typestr <f8"):
        describe(FakeArray("<f8"), "act")
    with pytest.raises(ValueError, match="C-contiguous"):
        describe(FakeArray(shape=(2, 2), strides=(4, 8)), "act")
    with pytest.raises(ValueError, match="empty"):
        describe(FakeArray(shape=(3, 0)), "act")
    with pytest.raises(ValueError, match="not a valid"):
        describe(FakeArray(ptr=4098), "act")
    with pytest.raises(ValueError, match="stream 0"):
        describe(FakeArray(stream=0), "act")
    with pytest.raises(ValueError, match="DeviceTensor"):
        describe(np.zeros(3, np.float32), "act")
    with pytest.raises(ValueError, match="got dtype int64"):
        describe(DeviceTensor(4096, (3,), np.int64), "act")
    d = describe(FakeArray(shape=(2, 1, 3), strides=(12, 999, 4), stream=77), "act")  # size-1 dims: any stride
    assert (d.size, d.is_half, d.stream, d.wait_current) == (6, False, 77, False)
    assert describe(FakeArray("<f2"), "act").is_half


def test_specs_are_checked_like_tensor_stats():
    assert normalize_specs([(2048, None, None)])[0].grid_bins == 65536
    with pytest.raises(ValueError, match="spec 1: grid_bins must be a power of two"):
        normalize_specs([(2048, None, None), (2048, 3000, None)])
    with pytest.raises(ValueError, match="spec 0: expected"):
        normalize_specs([(2048, None)])


def test_work_table_lays_out_entries_and_allocates_channels_only_for_valid_batches():
    specs = normalize_specs([(128, None, None), (128, None, 1), (128, None, None)])
    allocated = []

    def keys(i, channels):
        allocated.append((i, channels))
        return 1 << 20

    counts = [None, None, None]
    plan = plan_update(specs, [FakeArray(shape=(5,)), FakeArray("<f2", shape=(2, 3, 4), ptr=8192), None],
                       ["a", "b", "c"], counts, keys)
    assert plan.work["start"].tolist() == [0, 5] and plan.work["size"].tolist() == [5, 24]
    assert plan.work["tensor"].tolist() == [0, 1] and plan.work["flags"].tolist() == [0, 1]
    assert plan.work["channels"].tolist() == [0, 3] and plan.work["inner"].tolist() == [0, 4]
    assert plan.axis_work["start"].tolist() == [0] and plan.axis_total == 24 and plan.total == 29
    assert plan.wait_current and not plan.streams and allocated == [(1, 3)]  # no stream information
    with_stream = plan_update(specs[:1], [FakeArray(stream=99)], None, [None], keys)
    assert with_stream.streams == {99} and not with_stream.wait_current
    counts[1] = 3
    with pytest.raises(ValueError, match="b: axis 1 has 5 channels, earlier updates had 3"):
        plan_update(specs, [None, FakeArray(shape=(2, 5)), None], ["a", "b", "c"], counts, keys)
    with pytest.raises(ValueError, match="c: expected a float32"):
        plan_update(specs, [None, FakeArray(shape=(2, 3)), FakeArray("<i4")], ["a", "b", "c"], counts, keys)
    assert allocated == [(1, 3)]  # nothing allocated for the refused batches
    with pytest.raises(ValueError, match="axis 1 is out of range for an array with 1 dimensions"):
        plan_update(specs, [None, FakeArray(shape=(7,)), None], None, [None] * 3, keys)
    with pytest.raises(ValueError, match="update got 2 arrays for 3 statistics"):
        plan_update(specs, [None, None], None, counts, keys)


def test_grid_size_rules():
    assert grid_blocks(10, 132, 1 << 15) == 1
    assert grid_blocks(1 << 30, 132, 1 << 15) == 132
    assert grid_blocks(100 * (1 << 15), 132, 1 << 15) == 100
    big = 300 * MAX_BLOCK_ELEMENTS + 1
    assert grid_blocks(big, 132, 1 << 15) == 301  # no block above 2^31 elements


# --- compiling the kernel source -----------------------------------------------------------------
def test_kernel_sources_are_the_core_sources():
    dirs = source_dirs()
    for name in KERNEL_FILES:
        found = next(d / name for d in dirs if (d / name).is_file())
        original = ROOT / "csrc" / name if name == "binning.h" else ROOT / "csrc" / "cuda" / name
        assert found.read_bytes() == original.read_bytes(), name
    code, includes = kernel_code()
    assert code.startswith("// ptqengine statistics kernels, sources sha256 ") and includes


def _nvrtc():
    spec = importlib.util.find_spec("nvidia")
    libs = [Path(p) / "cu13" / "lib" for p in (spec.submodule_search_locations if spec else [])]
    lib = next((d for d in libs if (d / "libnvrtc.so.13").is_file()), None)
    if lib is None:
        pytest.skip("NVRTC not installed (pip install nvidia-cuda-nvrtc)")
    for builtins in sorted(lib.glob("libnvrtc-builtins.so.*")):
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(lib / "libnvrtc.so.13"))


def test_kernel_source_compiles_under_nvrtc_as_cupy_calls_it():
    nvrtc = _nvrtc()
    code, _ = kernel_code()
    # CuPy adds these to our options (cupy/cuda/compiler.py): the device is a Hopper here.
    options = [*nvrtc_options(LaunchConfig()), "-arch=compute_90", "-ftz=true", "--device-as-default-execution-space"]
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"stats_kernels.cu", 0, None, None) == 0
    argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    result = nvrtc.nvrtcCompileProgram(prog, len(options), argv)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert result == 0, log.value.decode()
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    for kernel in ("ptq_count", "ptq_channel_extremes", "ptq_grow"):
        assert f".entry {kernel}(" in ptx.value.decode(), kernel


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_kernel_source_compiles_with_nvcc(tmp_path):
    run = subprocess.run(["nvcc", "-c", "-std=c++17", "-arch=sm_90", "-Xptxas", "-v", f"-I{ROOT / 'csrc'}",
                          f"-I{ROOT / 'csrc' / 'cuda'}", str(ROOT / "csrc" / "cuda" / "stats_kernels.cu"),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for kernel in ("ptq_count", "ptq_channel_extremes", "ptq_grow"):
        assert f"Compiling entry function '{kernel}' for 'sm_90'" in run.stderr
    # The growth and channel kernels keep everything in registers; the count kernel may spill
    # only the few item-boundary values it does today (its hot loop has none: see the notes).
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", run.stderr)]
    assert len(spills) == 3 and max(spills) <= 64, run.stderr


# --- availability and device errors ---------------------------------------------------------------
def test_device_strings():
    assert device_index("cuda") == 0 and device_index("cuda:3") == 3
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA"):
        with pytest.raises(OptionError, match="expected 'cuda' or 'cuda:N'"):
            device_index(bad)


def test_gpu_status_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(OptionError, match=r"device 'cuda:1' needs CuPy, which is not installed \(pip install"):
        gpu_status("cuda:1")
    from ptqengine.gpu import DeviceStatsSet

    with pytest.raises(OptionError, match="needs CuPy"):
        DeviceStatsSet([(2048, None, None)])


def _fake_cupy(count=None, error=None):
    class CUDARuntimeError(RuntimeError):
        pass

    def get_count():
        if error:
            raise CUDARuntimeError(error)
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_count, CUDARuntimeError=CUDARuntimeError)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def test_gpu_status_names_missing_driver_and_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(error="cudaErrorInsufficientDriver: CUDA driver\nversion"))
    with pytest.raises(OptionError, match=r"^device 'cuda': no usable CUDA driver or GPU \(cudaErrorInsufficientDriver: CUDA driver\)$"):
        gpu_status("cuda")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count=1))
    with pytest.raises(OptionError, match=r"device 'cuda:7' does not exist: this machine has 1 CUDA device \(cuda:0\)"):
        gpu_status("cuda:7")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count=0))
    with pytest.raises(OptionError, match="no CUDA GPU found"):
        gpu_status("cuda")


@pytest.mark.skipif(HAS_GPU or importlib.util.find_spec("cupy") is None, reason="needs CuPy without a GPU")
def test_gpu_status_with_real_cupy_and_no_gpu():
    with pytest.raises(OptionError, match="device 'cuda': no usable CUDA driver or GPU"):
        gpu_status("cuda")


# --- on the GPU -----------------------------------------------------------------------------------
def _device_stats(specs, batches, **kwargs):
    import cupy as cp

    from ptqengine.gpu import DeviceStatsSet

    stats = DeviceStatsSet(specs, **kwargs)
    for batch in batches:
        stats.update([None if x is None else cp.asarray(x) for x in batch])
    return stats


@gpu
def test_gpu_status_accepts_the_device():
    gpu_status("cuda")
    gpu_status("cuda:0")


@gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_statistics_equal_cpu_statistics(case):
    specs, batches = make(case)
    assert_all_same(_device_stats(specs, batches).to_host(), cpu_expected(specs, batches), case)


@gpu
@pytest.mark.parametrize("case", ["growth", "many", "specials", "half"])
def test_gpu_statistics_do_not_depend_on_batch_order_or_split(case):
    specs, batches = make(case, seed=8)
    order = list(range(len(batches)))[::-1]
    stats = _device_stats(specs, rebatch(specs, batches, order, parts=3))
    assert_all_same(stats.to_host(), cpu_expected(specs, batches), case)


@gpu
@pytest.mark.parametrize("config", [LaunchConfig(threads=512, blocks_per_sm=2), LaunchConfig(window_bytes=0),
                                    LaunchConfig(window_bytes=4096, values_per_bin=1, unroll=1)])
def test_gpu_statistics_do_not_depend_on_launch_geometry(config):
    for case in ("many", "relu6", "per_channel"):
        specs, batches = make(case, seed=4)
        assert_all_same(_device_stats(specs, batches, config=config).to_host(), cpu_expected(specs, batches), case)


@gpu
def test_gpu_large_tensors_and_continued_updates():
    rng = np.random.default_rng(9)
    specs = [(2048, None, None), (2048, None, None)]
    batches = [[rng.standard_normal(40_000_000, dtype=np.float32) * s,
                np.maximum(rng.standard_normal(9_000_000, dtype=np.float32), 0) * s] for s in (1.0, 7.0)]
    stats = _device_stats(specs, batches[:1])
    first = stats.to_host()  # to_host mid-way leaves the set usable
    assert_all_same(first, cpu_expected(specs, batches[:1]), "first batch")
    import cupy as cp

    stats.update([cp.asarray(x) for x in batches[1]])
    stats.synchronize()
    assert_all_same(stats.to_host(), cpu_expected(specs, batches), "two batches")


@gpu
def test_tensor_stats_update_on_gpu_arrays_equals_host():
    import cupy as cp

    rng = np.random.default_rng(10)
    for x in (rng.standard_normal(1_000_003).astype(np.float32) * 5,
              (rng.standard_normal((8, 16, 20)) * 300).astype(np.float16)):
        assert_same(TensorStats().update(cp.asarray(x)).update(cp.asarray(x[::-1].copy())),
                    TensorStats().update(x).update(x[::-1]), "TensorStats.update")
    per_channel = rng.standard_normal((4, 8, 30)).astype(np.float32)
    assert_same(TensorStats(axis=1).update(cp.asarray(per_channel)), TensorStats(axis=1).update(per_channel),
                "per-channel TensorStats.update")
    if _core.cuda_built:
        x = rng.standard_normal(500_000).astype(np.float32)
        assert_same(TensorStats().update_device_legacy(cp.asarray(x)), TensorStats().update(x), "legacy")


@gpu
def test_gpu_inputs_as_device_tensors_and_from_other_streams():
    import cupy as cp

    from ptqengine.gpu import DeviceStatsSet

    rng = np.random.default_rng(11)
    host = [rng.standard_normal(3_000_000).astype(np.float32), rng.standard_normal(1000).astype(np.float16)]
    producer = cp.cuda.Stream(non_blocking=True)
    stats = DeviceStatsSet([(2048, None, None), (2048, None, None)], names=["x", "y"])
    y = cp.asarray(host[1])
    cp.cuda.Device().synchronize()  # a DeviceTensor must be complete when handed over
    with producer:  # x is written on another stream, still running when update() is called
        x = cp.empty(host[0].shape, cp.float32)
        for _ in range(20):
            x[...] = cp.asarray(host[0]) * 1.0
        stats.update([x, DeviceTensor(y.data.ptr, y.shape, y.dtype)])  # x: CAI v3 names the stream
    producer.synchronize()
    assert_all_same(stats.to_host(), cpu_expected([(2048, None, None)] * 2, [host]), "streams")
    with pytest.raises(ValueError, match="y: address .* is not memory of GPU"):
        stats.update([None, DeviceTensor(host[1].ctypes.data, host[1].shape, host[1].dtype)])
    with pytest.raises(OptionError, match="does not exist"):
        gpu_status(f"cuda:{cp.cuda.runtime.getDeviceCount()}")
