"""Can this process run statistics on a GPU? One-line OptionErrors when it cannot."""
from __future__ import annotations

import re
from typing import Any

from ..errors import OptionError

INSTALL_HINT = 'pip install ".[gpu]" in the ptqengine checkout'  # as the README's GPU section says


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def import_cupy(device: str = "cuda") -> Any:
    """CuPy, or an OptionError naming the device option and how to get CuPy."""
    try:
        import cupy
    except ImportError:
        raise OptionError(f"device '{device}' needs CuPy, which is not installed ({INSTALL_HINT})") from None
    except Exception as exc:  # a broken CUDA library set fails at import with all kinds of errors
        raise OptionError(f"device '{device}': CuPy cannot be imported ({_one_line(exc)})") from None
    return cupy


def device_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N; anything else is an OptionError."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device.strip()) if isinstance(device, str) else None
    if match is None:
        raise OptionError(f"device {device!r}: expected 'cuda' or 'cuda:N'")
    return int(match.group(1) or 0)


def device_count() -> int:
    """CUDA devices visible to this process (0 when CuPy or the driver is missing)."""
    try:
        return int(import_cupy().cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver: no device
        return 0


def gpu_status(device: str) -> None:
    """Raise OptionError (one line) unless `device` ('cuda' or 'cuda:N') can count statistics:
    CuPy importable, a driver and that device present, the kernels compiled (first call per
    device and process: NVRTC, a few seconds; CuPy caches the binary on disk)."""
    index = device_index(device)
    cupy = import_cupy(device)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise OptionError(f"device '{device}': no usable CUDA driver or GPU ({_one_line(exc)})") from None
    if count == 0:
        raise OptionError(f"device '{device}': no CUDA GPU found")
    if index >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
        raise OptionError(f"device '{device}' does not exist: this machine has {count} CUDA "
                          f"device{'s' if count > 1 else ''} ({have})")
    from cupy.cuda.compiler import CompileException

    from .kernels import LaunchConfig, load_kernels

    try:
        load_kernels(index, LaunchConfig())
    except CompileException:
        raise  # our kernel source failed to compile: a bug, not an option error
    except (OSError, RuntimeError, ImportError) as exc:  # e.g. no NVRTC library beside CuPy
        raise OptionError(f"device '{device}': CuPy cannot compile the statistics kernels "
                          f"({_one_line(exc)}; {INSTALL_HINT})") from None
