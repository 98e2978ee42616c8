"""DeviceStatsSet: the statistics of many tensors, kept on one GPU across batches.

update() plans the batch on the host (worklist.py), copies the work table from pinned memory
and queues four launches on the set's own stream (stats_logic.h describes them); nothing waits
for the GPU. Inputs stay referenced until the GPU has read them. to_host() brings the states and
counts over once and builds TensorStats (convert.py).
"""
from __future__ import annotations

import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..stats import TensorStats
from .convert import to_tensor_stats
from .kernels import LaunchConfig, load_kernels
from .layout import KEY_MINUS_INF, KEY_PLUS_INF, initial_states, total_counts
from .status import import_cupy
from .worklist import UpdatePlan, grid_blocks, normalize_specs, plan_update

_DEVICE_MEMORY_TYPES = (2, 3)  # cudaMemoryTypeDevice, cudaMemoryTypeManaged


class DeviceStatsSet:
    """Statistics of len(specs) tensors on GPU `device_id`; specs as TensorStats takes them:
    (num_bins, grid_bins or None, axis or None). names (optional) label errors."""

    def __init__(self, specs: Sequence[Tuple[int, Optional[int], Optional[int]]], device_id: int = 0, *,
                 names: Optional[Sequence[str]] = None, config: Optional[LaunchConfig] = None) -> None:
        self._specs = normalize_specs(specs)
        if names is not None and len(names) != len(self._specs):
            raise ValueError(f"got {len(names)} names for {len(self._specs)} statistics")
        self._names = list(names) if names is not None else None
        self._cp = cp = import_cupy(f"cuda:{device_id}")
        self._device = cp.cuda.Device(device_id)
        self._kernels = load_kernels(device_id, config or LaunchConfig())
        with self._device:
            self._stream = cp.cuda.Stream(non_blocking=True)
        self._inflight: List[Tuple[Any, tuple]] = []  # (event, what must outlive the GPU's reads)
        self._checked_pointers: set = set()
        self._reset()

    def _reset(self) -> None:
        """Back to no data (device buffers allocated on the set's stream, ordered before use)."""
        cp = self._cp
        grid = [s.grid_bins for s in self._specs]
        with self._device, self._stream:
            self._states = cp.asarray(initial_states(grid).view(np.uint8))
            self._counts = cp.zeros(total_counts(grid), dtype=cp.uint64)
        self._channel_keys: List[Optional[Any]] = [None] * len(self._specs)
        self._channel_counts: List[Optional[int]] = [None] * len(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def stream(self) -> Any:
        """The cupy.cuda.Stream every update runs on."""
        return self._stream

    # --- per batch -----------------------------------------------------------------------------
    def update(self, arrays: Sequence[Any]) -> None:
        """Queue the statistics of one batch: one array per spec (None skips that tensor), each
        with __cuda_array_interface__ or a DeviceTensor, C-contiguous float32/float16 on this
        device. Returns without waiting for the GPU."""
        cp = self._cp
        caller_stream = cp.cuda.get_current_stream()
        plan = plan_update(self._specs, arrays, self._names, self._channel_counts, self._new_channel_keys)
        if plan.total == 0:
            return
        self._check_pointers(plan)
        with self._device, self._stream:
            self._wait_for_producers(plan, caller_stream)
            tables = self._upload_tables(plan)
            self._launch(plan, tables)
            event = cp.cuda.Event(disable_timing=True)
            event.record(self._stream)
        self._inflight = [(e, k) for e, k in self._inflight if not e.done]
        self._inflight.append((event, (tuple(arrays), tables)))

    def _upload_tables(self, plan: UpdatePlan) -> tuple:
        """(work, pinned, axis_work, axis_pinned) on the device; pinned buffers must outlive the copy."""
        work, pinned = self._upload(plan.work)
        axis_work, axis_pinned = self._upload(plan.axis_work) if plan.axis_total else (None, None)
        return work, pinned, axis_work, axis_pinned

    def _capture_update(self, arrays: Sequence[Any]) -> Tuple[Any, tuple]:
        """For benchmarks: one update's launches as a CUDA graph (replaying it times the kernels
        without Python's launch overhead). Returns (graph, what must outlive its replays); the
        inputs must be complete, and each replay counts them again."""
        plan = plan_update(self._specs, arrays, self._names, self._channel_counts, self._new_channel_keys)
        self._check_pointers(plan)
        with self._device, self._stream:
            tables = self._upload_tables(plan)
            self._stream.synchronize()
            self._stream.begin_capture()
            try:
                self._launch(plan, tables)
            finally:
                graph = self._stream.end_capture()
        return graph, (tuple(arrays), tables)

    def _launch(self, plan: UpdatePlan, tables: tuple) -> None:
        k, cfg = self._kernels, self._kernels.config
        work, _, axis_work, _ = tables
        n = np.uint32(len(plan.work))
        blocks = grid_blocks(plan.total, k.max_blocks, cfg.min_block_elements)
        count_args = (work, n, np.uint64(plan.total), self._states, self._counts, np.uint32(k.capacity),
                      np.uint32(cfg.values_per_bin))
        k.count((blocks,), (cfg.threads,), count_args + (np.int32(1),), shared_mem=k.shared_bytes)
        if plan.axis_total:
            axis_blocks = grid_blocks(plan.axis_total, k.max_blocks, cfg.min_block_elements)
            k.channel_extremes((axis_blocks,), (cfg.threads,),
                               (axis_work, np.uint32(len(plan.axis_work)), np.uint64(plan.axis_total),
                                np.uint32(k.capacity)), shared_mem=k.shared_bytes)
        k.grow((int(n),), (cfg.threads,), (work, self._states, self._counts))
        k.count((blocks,), (cfg.threads,), count_args + (np.int32(0),), shared_mem=k.shared_bytes)

    def _upload(self, table: np.ndarray) -> Tuple[Any, Any]:
        """Host table -> device, asynchronously from pinned memory (kept alive by the caller)."""
        cp = self._cp
        raw = table.view(np.uint8).reshape(-1)
        pinned = cp.cuda.alloc_pinned_memory(raw.nbytes)
        np.frombuffer(pinned, dtype=np.uint8, count=raw.nbytes)[:] = raw
        device = cp.empty(raw.nbytes, dtype=cp.uint8)  # pool memory of this stream: ordered reuse
        cp.cuda.runtime.memcpyAsync(device.data.ptr, pinned.ptr, raw.nbytes,
                                    cp.cuda.runtime.memcpyHostToDevice, self._stream.ptr)
        return device, pinned

    def _wait_for_producers(self, plan: UpdatePlan, caller_stream: Any) -> None:
        """Order the kernels after whatever wrote the inputs, without blocking the host: an event
        on each producer stream (__cuda_array_interface__ v3 names it; else the caller's current
        stream), waited for by the set's stream."""
        cp = self._cp
        producers = sorted(plan.streams) + ([caller_stream.ptr] if plan.wait_current else [])
        for stream_ptr in dict.fromkeys(producers):
            written = cp.cuda.Event(disable_timing=True)
            cp.cuda.runtime.eventRecord(written.ptr, stream_ptr)
            self._stream.wait_event(written)

    def _check_pointers(self, plan: UpdatePlan) -> None:
        """Each new input address must be memory of this device (a wrong one would crash the
        kernels and lose the context); addresses seen before are not asked again."""
        runtime = self._cp.cuda.runtime
        for ptr, tensor in zip(plan.work["data"].tolist(), plan.work["tensor"].tolist()):
            if ptr in self._checked_pointers:
                continue
            attrs = runtime.pointerGetAttributes(ptr)
            if attrs.type not in _DEVICE_MEMORY_TYPES or attrs.device != self._device.id:
                what = self._names[tensor] if self._names else f"tensor {tensor}"
                raise ValueError(f"{what}: address {ptr:#x} is not memory of GPU {self._device.id}")
            if len(self._checked_pointers) > 65536:
                self._checked_pointers.clear()
            self._checked_pointers.add(ptr)

    def _new_channel_keys(self, tensor: int, channels: int) -> int:
        if self._channel_keys[tensor] is None:
            keys = np.concatenate([np.full(channels, KEY_PLUS_INF, np.int32),
                                   np.full(channels, KEY_MINUS_INF, np.int32)])
            with self._device, self._stream:
                self._channel_keys[tensor] = self._cp.asarray(keys)
            self._channel_counts[tensor] = channels
        return int(self._channel_keys[tensor].data.ptr)

    def synchronize(self) -> None:
        """Wait until every queued update has finished reading its inputs."""
        self._stream.synchronize()
        self._inflight.clear()

    def record_event(self) -> Any:
        """A cupy.cuda.Event that completes when the updates queued so far have; another stream
        can wait for it (stream.wait_event) instead of the host."""
        event = self._cp.cuda.Event(disable_timing=True)
        event.record(self._stream)
        return event

    # --- once at the end -----------------------------------------------------------------------
    def to_host(self) -> List[TensorStats]:
        """Statistics so far, one TensorStats per spec (bit-identical to the CPU's on the same data)."""
        from .layout import STATE_DTYPE

        with self._device, self._stream:
            self._stream.synchronize()
            states = self._states.get().view(STATE_DTYPE)
            counts = self._counts.get()
            keys = [None if k is None else k.get() for k in self._channel_keys]
            self._stream.synchronize()
        self._inflight.clear()
        out = []
        for i, spec in enumerate(self._specs):
            off = int(states[i]["counts_offset"])
            what = self._names[i] if self._names else f"tensor {i}"
            out.append(to_tensor_stats(spec, states[i], counts[off:off + 2 * spec.grid_bins], keys[i], what))
        return out


_single = threading.local()


def update_tensor_stats(stats: TensorStats, array: Any) -> None:
    """TensorStats.update for one GPU array: count it with the set kernels, fold it into stats.
    A one-tensor set per thread, device and spec is kept and reset between calls. Without CuPy, the
    extension's own CUDA kernels count it (when it was built with them)."""
    from .tensors import describe

    ptr = describe(array, "GPU array").ptr  # dtype, layout and size checks before any CUDA call
    try:
        import cupy as cp
    except ImportError:
        update_tensor_stats_legacy(stats, array)
        return
    attrs = cp.cuda.runtime.pointerGetAttributes(ptr)
    if attrs.type not in _DEVICE_MEMORY_TYPES:
        raise ValueError(f"GPU array: address {ptr:#x} is not device memory")
    device_id = attrs.device
    key = (device_id, stats.num_bins, stats.grid_bins, stats.axis)
    sets = getattr(_single, "sets", None)
    if sets is None:
        sets = _single.sets = {}
    one = sets.get(key)
    if one is None:
        one = sets[key] = DeviceStatsSet([(stats.num_bins, stats.grid_bins, stats.axis)], device_id)
    else:
        one._reset()
    one.update([array])
    stats.merge(one.to_host()[0])


def update_tensor_stats_legacy(stats: TensorStats, array: Any) -> None:
    """The extension's own CUDA kernels (csrc/cuda/stats_cuda.cu), kept for comparison."""
    from .tensors import describe

    d = describe(array, "GPU array")
    if stats.axis is not None:
        raise ValueError("per-channel statistics of GPU arrays need CuPy (ptqengine[gpu]) or a host array")
    stats._native.update_device(d.ptr, d.size, d.is_half)
