"""Host images of the device structures in csrc/cuda/stats_logic.h (pure NumPy, no GPU).

TensorState and WorkEntry are read and written by the kernels exactly as laid out here; a test
compiles the C++ side and compares sizes and offsets.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

EMPTY_EXPONENT = -1000            # ptq::kEmptyExponent
KEY_PLUS_INF = 0x7F800000          # order key of +inf: "no minimum yet"
KEY_MINUS_INF = -0x7F800001        # order key of -inf (0x807fffff as int32): "no maximum yet"
NO_RECOUNT = 0xFFFFFFFF
FLAG_HALF = 1


def _struct(fields: Sequence[tuple], itemsize: int) -> np.dtype:
    names, formats, offsets = zip(*fields)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": itemsize})


STATE_DTYPE = _struct([
    ("count", "<u8", 0), ("nan_count", "<u8", 8), ("inf_count", "<u8", 16),
    ("counts_offset", "<u8", 24), ("min_key", "<i4", 32), ("max_key", "<i4", 36),
    ("route_min_key", "<i4", 40), ("route_max_key", "<i4", 44), ("exponent", "<i4", 48),
    ("recount_lo", "<u4", 52), ("log2_bins", "<i4", 56), ("reserved", "<u4", 60),
], 64)

WORK_DTYPE = _struct([
    ("data", "<u8", 0), ("size", "<u8", 8), ("start", "<u8", 16), ("inner", "<u8", 24),
    ("channel_keys", "<u8", 32), ("tensor", "<u4", 40), ("flags", "<u4", 44),
    ("channels", "<u4", 48), ("reserved", "<u4", 52),
], 64)


def initial_states(grid_bins: Sequence[int]) -> np.ndarray:
    """Fresh device states for tensors with these grid sizes, counts packed one after another."""
    grid = np.asarray(grid_bins, dtype=np.int64)
    states = np.zeros(len(grid), dtype=STATE_DTYPE)
    sizes = 2 * grid
    states["counts_offset"] = np.cumsum(sizes) - sizes
    states["min_key"] = states["route_min_key"] = KEY_PLUS_INF
    states["max_key"] = states["route_max_key"] = KEY_MINUS_INF
    states["exponent"] = EMPTY_EXPONENT
    states["recount_lo"] = NO_RECOUNT
    states["log2_bins"] = [int(g).bit_length() - 1 for g in grid]
    return states


def total_counts(grid_bins: Sequence[int]) -> int:
    """Length of the counts buffer for initial_states(grid_bins)."""
    return int(2 * np.sum(np.asarray(grid_bins, dtype=np.int64)))


def _flip_negative(bits: np.ndarray) -> np.ndarray:
    """ptq::flip_negative (csrc/binning.h) on int32 bits: its own inverse."""
    return bits ^ ((bits >> 31).view(np.uint32) >> np.uint32(1)).view(np.int32)


def float_keys(values: np.ndarray) -> np.ndarray:
    """Order keys of float32 values (what the kernels compare with integer min/max)."""
    return _flip_negative(np.ascontiguousarray(values, dtype=np.float32).view(np.int32))


def keys_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of float_keys, with -0.0 read as +0.0 (the CPU's convention)."""
    return _flip_negative(np.ascontiguousarray(keys, dtype=np.int32)).view(np.float32) + np.float32(0.0)
