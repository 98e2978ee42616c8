"""Runs a session on feeds and returns the requested outputs, with output buffers bound once and reused.

CPU: the first batch of each input shape runs plainly; its output arrays become the buffers bound
(IOBinding) for the next batches of that shape, rather than ~30 MB per image allocated and page-faulted
afresh every batch. If an output's shape depends on the data (onnxruntime then refuses the buffer), that
shape falls back to plain runs.
CUDA, outputs kept on the device (statistics): outputs are bound to device memory that onnxruntime
allocates on the first batch of a shape and that is then reused, per slot; the caller gets DeviceTensor
views (pointer, shape, dtype) and must be done reading a slot before it is run again. Otherwise CUDA
outputs are copied to the host by onnxruntime.
Two slots let one batch be read while the next is written; at most MAX_BUFFER_SETS shapes are kept, the
least recently used dropped first.
Lifetime: each view holds the OrtValue it points into (DeviceTensor.owner), and whoever reads the view on
another stream holds the view until that read has completed (DeviceStatsSet keeps its inputs until the
batch's event). So the memory outlives the kernels even when the runner lets go of it first: outputs
of a shape that cannot be bound (kept by no buffer set) and a buffer set dropped while its last batch
is still being read.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Sequence

import numpy as np

from ..errors import DataError
from .device import CPU, Device

log = logging.getLogger(__name__)

Feeds = Dict[str, np.ndarray]


def ort_error_line(exc: Exception, feeds: Feeds, origin: str = "") -> str:
    shapes = ", ".join(f"{n} [{','.join(map(str, a.shape))}]" for n, a in feeds.items())
    where = f"{origin}: " if origin else ""
    return f"{where}onnxruntime failed on inputs {shapes}: {str(exc).splitlines()[0]}"


class Runner:
    MAX_BUFFER_SETS = 4  # two slots x (the full batch, the one short batch at the end)

    def __init__(self, session: Any, outputs: Sequence[str], device: Device = CPU, keep_on_device: bool = False,
                 origin: str = "", reuse_buffers: bool = True) -> None:
        self.session = session
        self.outputs = list(outputs)
        self.device = device
        self.keep_on_device = keep_on_device and device.is_cuda
        self.origin = origin
        # False: every run returns new arrays (for callers that keep a batch's outputs past the next run)
        self.reuse_buffers = reuse_buffers
        self._buffers: "OrderedDict[tuple, List[Any]]" = OrderedDict()
        self._unbindable: set = set()

    def run(self, feeds: Feeds, slot: int = 0) -> List[Any]:
        """Outputs for feeds (numpy arrays, or DeviceTensor views when kept on the device)."""
        if (self.device.is_cuda and not self.keep_on_device) or not self.reuse_buffers:
            return self._run_plain(feeds)
        shapes = tuple((n, a.shape, a.dtype.str) for n, a in feeds.items())
        key = (slot, shapes)
        buffers = self._buffers.get(key)
        if buffers is not None:
            self._buffers.move_to_end(key)  # least recently used first out
            try:
                return self._run_bound(feeds, buffers)
            except DataError:
                raise
            except Exception as exc:  # data-dependent output shapes
                log.debug("output buffers not reusable (%s); running without reuse", exc)
                del self._buffers[key]
                self._unbindable.add(shapes)
        if self.keep_on_device:
            values = self._run_device(feeds)
            results = [_device_view(v) for v in values]
        else:
            values = results = self._run_plain(feeds)
        if shapes not in self._unbindable:
            self._buffers[key] = values
            while len(self._buffers) > self.MAX_BUFFER_SETS:
                self._buffers.popitem(last=False)
        return results

    def _run_plain(self, feeds: Feeds) -> List[np.ndarray]:
        try:
            return self.session.run(self.outputs, feeds)
        except Exception as exc:
            raise DataError(ort_error_line(exc, feeds, self.origin)) from None

    def _bind_inputs(self, feeds: Feeds) -> Any:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        return binding

    def _run_device(self, feeds: Feeds) -> List[Any]:
        """Outputs allocated by onnxruntime on the device (OrtValues, kept as the slot's buffers)."""
        binding = self._bind_inputs(feeds)
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device.index)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise DataError(ort_error_line(exc, feeds, self.origin)) from None
        binding.synchronize_outputs()  # the statistics kernels read them on another stream
        return binding.get_outputs()

    def _run_bound(self, feeds: Feeds, buffers: List[Any]) -> List[Any]:
        binding = self._bind_inputs(feeds)
        if self.keep_on_device:
            for name, value in zip(self.outputs, buffers):
                binding.bind_ortvalue_output(name, value)
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()  # the statistics kernels read them on another stream
            return [_device_view(v) for v in buffers]
        for name, buf in zip(self.outputs, buffers):
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        self.session.run_with_iobinding(binding)
        return buffers


class ModelRunner:
    """A session with the runner's error handling, for layers below collection that run models but may not
    import it (the Q/DQ export's data-driven steps): `run(outputs, feeds)` as onnxruntime's session takes it,
    new arrays every call, a failure a DataError naming the model; `get_inputs()` as the session's."""

    def __init__(self, session: Any, origin: str, device: Device = CPU) -> None:
        self.session = session
        self.origin = origin
        self.device = device

    def get_inputs(self) -> List[Any]:
        return self.session.get_inputs()

    def run(self, outputs: Sequence[str], feeds: Feeds) -> List[np.ndarray]:
        return Runner(self.session, outputs, self.device, origin=self.origin, reuse_buffers=False).run(feeds)


_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


def _device_view(value: Any) -> Any:
    """A view that keeps its OrtValue (and so the memory it points to) alive."""
    from ..gpu import DeviceTensor

    return DeviceTensor(int(value.data_ptr()), tuple(value.shape()), _ORT_DTYPES[value.data_type()], owner=value)
