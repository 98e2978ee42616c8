"""What the device statistics read: a described device array (no GPU needed to describe one).

Two kinds of input are accepted: any object with __cuda_array_interface__ (CuPy, PyTorch,
Numba) and a DeviceTensor, a bare (pointer, shape, dtype) such as an onnxruntime OrtValue gives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

_TYPESTRS = {"<f4": np.dtype(np.float32), "<f2": np.dtype(np.float16)}
_IS_HALF = {np.dtype(np.float32): False, np.dtype(np.float16): True}


@dataclass(frozen=True)
class DeviceTensor:
    """C-contiguous float32 or float16 values in device memory, complete when handed over.

    owner: whatever keeps that memory allocated (an onnxruntime OrtValue), held as long as the view is.
    DeviceStatsSet holds its inputs until its kernels have read them, so a view with its owner is safe
    to hand over even when nothing else keeps the owner."""

    ptr: int
    shape: Tuple[int, ...]
    dtype: np.dtype
    owner: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


class Described(NamedTuple):
    """One input as the planner needs it (a NamedTuple: built per tensor per batch)."""

    ptr: int
    shape: Tuple[int, ...]
    is_half: bool
    size: int
    stream: Optional[int]  # producer stream to wait for (__cuda_array_interface__ v3), if any
    wait_current: bool     # no stream information: order after CuPy's current stream


def _c_contiguous(shape: Tuple[int, ...], strides: Tuple[int, ...], itemsize: int) -> bool:
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def describe(obj: Any, what: str) -> Described:
    """Validate one input; `what` names it in the one-line errors (ValueError)."""
    if isinstance(obj, DeviceTensor):
        if obj.dtype not in _IS_HALF:
            raise ValueError(f"{what}: expected float32 or float16, got dtype {obj.dtype}")
        return _described(what, obj.ptr, obj.shape, obj.dtype, None, None, False)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        raise ValueError(f"{what}: expected a GPU array (__cuda_array_interface__) or a DeviceTensor, "
                         f"got {type(obj).__name__}")
    dtype = _TYPESTRS.get(cai["typestr"])
    if dtype is None:
        raise ValueError(f"{what}: expected a float32 or float16 GPU array, got typestr {cai['typestr']}")
    return _described(what, int(cai["data"][0]), tuple(cai["shape"]), dtype, cai.get("strides"),
                      cai.get("stream"), "stream" not in cai)


def _described(what: str, ptr: int, shape: Tuple[int, ...], dtype: np.dtype, strides: Optional[Tuple[int, ...]],
               stream: Optional[int], wait_current: bool) -> Described:
    itemsize = dtype.itemsize
    if strides is not None and not _c_contiguous(shape, tuple(strides), itemsize):
        raise ValueError(f"{what}: GPU arrays must be C-contiguous (call .copy() or ascontiguousarray first)")
    if shape and min(shape) < 0:
        raise ValueError(f"{what}: negative dimension in shape {shape}")
    size = math.prod(shape)
    if size == 0:
        raise ValueError(f"{what}: cannot update statistics with an empty array")
    if ptr <= 0 or ptr % itemsize:
        raise ValueError(f"{what}: device address {ptr:#x} is not a valid {dtype} address")
    if stream == 0:
        raise ValueError(f"{what}: __cuda_array_interface__ stream 0 is not allowed (v3 protocol)")
    return Described(ptr, shape, _IS_HALF[dtype], size, stream, wait_current)
