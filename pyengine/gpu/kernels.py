"""The statistics kernels: sources, NVRTC compilation through CuPy, launch geometry.

The sources are the ones the CPU core is built from (csrc/binning.h) plus csrc/cuda/: shipped
inside the package as ptqengine/gpu/kernels/ (setup.py copies them), or read from the source
tree. CuPy compiles them once per device and process and caches the binary on disk; its cache
key is the source text, so the text starts with a digest of every file it includes.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

KERNEL_FILES = ("binning.h", "stats_logic.h", "stats_kernels.cu")
RESERVED_SHARED_PER_BLOCK = 1024  # what CUDA keeps of each block's shared memory for itself


@dataclass(frozen=True)
class LaunchConfig:
    """Launch geometry of the count kernels (defaults: one 1024-thread block per SM with all the
    shared memory the device allows as its window)."""

    threads: int = 1024
    blocks_per_sm: int = 1
    unroll: int = 4                # 16-byte loads in flight per thread
    window_bytes: Optional[int] = None  # per block; None: the device's maximum
    values_per_bin: int = 4        # a block uses a window bin per this many values it counts
    min_block_elements: int = 1 << 15  # fewer blocks for small launches

    def options(self) -> Tuple[str, ...]:
        # PTQ_WINDOW_BYTES is not read by the source: CuPy reuses one loaded module for equal source and
        # options, and a function's dynamic shared-memory limit is set on that module's function. Without
        # it, a config with a smaller window lowered the limit of the default config's functions and
        # their launches failed with CUDA_ERROR_INVALID_VALUE (seen on the H200).
        window = -1 if self.window_bytes is None else self.window_bytes
        return (f"-DPTQ_THREADS={self.threads}", f"-DPTQ_MIN_BLOCKS={self.blocks_per_sm}",
                f"-DPTQ_UNROLL={self.unroll}", f"-DPTQ_WINDOW_BYTES={window}")


def source_dirs() -> Tuple[Path, ...]:
    """Folders holding KERNEL_FILES: the shipped copy, else the source tree (csrc, csrc/cuda)."""
    here = Path(__file__).resolve().parent
    shipped = here / "kernels"
    if all((shipped / f).is_file() for f in KERNEL_FILES):
        return (shipped,)
    csrc = here.parent.parent / "csrc"
    tree = (csrc, csrc / "cuda")
    if all(any((d / f).is_file() for d in tree) for f in KERNEL_FILES):
        return tree
    raise FileNotFoundError(f"statistics kernel sources not found in {shipped} or {csrc}")


def kernel_code() -> Tuple[str, Tuple[str, ...]]:
    """(code, include options) for NVRTC: the .cu text behind a digest of all three files."""
    dirs = source_dirs()
    texts = {f: next(d / f for d in dirs if (d / f).is_file()).read_text() for f in KERNEL_FILES}
    digest = hashlib.sha256("\0".join(texts[f] for f in KERNEL_FILES).encode()).hexdigest()
    code = f"// ptqengine statistics kernels, sources sha256 {digest}\n" + texts["stats_kernels.cu"]
    return code, tuple(f"-I{d}" for d in dirs)


def nvrtc_options(config: LaunchConfig) -> Tuple[str, ...]:
    _, includes = kernel_code()
    return ("-std=c++17", *includes, *config.options())


@dataclass
class Kernels:
    count: Any           # cupy.RawKernel
    channel_extremes: Any
    grow: Any
    config: LaunchConfig
    capacity: int        # shared window bins per block
    max_blocks: int

    @property
    def shared_bytes(self) -> int:
        return 4 * self.capacity


_cache: Dict[Tuple[int, LaunchConfig], Kernels] = {}
_lock = threading.Lock()


def load_kernels(device_id: int, config: LaunchConfig) -> Kernels:
    """Compile (first call per device and config) and size the kernels for a device."""
    key = (device_id, config)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(device_id, config)
        return _cache[key]


def _build(device_id: int, config: LaunchConfig) -> Kernels:
    import cupy as cp

    runtime = cp.cuda.runtime
    code, _ = kernel_code()
    with cp.cuda.Device(device_id):
        module = cp.RawModule(code=code, options=nvrtc_options(config))
        count = module.get_function("ptq_count")
        channel = module.get_function("ptq_channel_extremes")
        grow = module.get_function("ptq_grow")
        optin = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id)
        per_sm = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerMultiprocessor, device_id)
        sms = runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device_id)
        static = max(count.shared_size_bytes, channel.shared_size_bytes)
        room = min(optin, per_sm // config.blocks_per_sm - RESERVED_SHARED_PER_BLOCK) - static
        window = room if config.window_bytes is None else min(room, config.window_bytes)
        capacity = max(0, window // 4 // 32 * 32)
        for kernel in (count, channel):
            kernel.max_dynamic_shared_size_bytes = 4 * capacity
        return Kernels(count, channel, grow, config, capacity, sms * config.blocks_per_sm)
