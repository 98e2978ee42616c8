"""The work table of one update (pure NumPy): which tensors a launch reads and where.

The kernels split the launch's elements (all entries end to end) into one contiguous range per
block (stats_logic.h: block_first, find_entry); this module only lays out the entries, checks
every input, and sizes the grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

import numpy as np

from .. import _core
from ..stats import default_grid_bins
from .layout import FLAG_HALF, WORK_DTYPE
from .tensors import describe

# A launch covers fewer than 2^40 elements (the kernels multiply positions by block indices in
# 64 bits), and no block more than 2^31 (its 32-bit shared counters cannot overflow).
MAX_LAUNCH_ELEMENTS = 1 << 40
MAX_BLOCK_ELEMENTS = 1 << 31


@dataclass(frozen=True)
class StatsSpec:
    """One tensor's statistics parameters, as ptqengine.TensorStats takes them."""

    num_bins: int
    grid_bins: int
    axis: Optional[int]


def normalize_specs(specs: Sequence[Any]) -> List[StatsSpec]:
    """(num_bins, grid_bins or None, axis or None) per tensor, checked like TensorStats."""
    out = []
    for i, spec in enumerate(specs):
        try:
            num_bins, grid_bins, axis = spec
        except (TypeError, ValueError):
            raise ValueError(f"spec {i}: expected (num_bins, grid_bins, axis), got {spec!r}") from None
        if grid_bins is None:
            grid_bins = default_grid_bins(num_bins)
        try:  # the native constructor owns the rules (and their messages)
            _core.TensorStats(int(num_bins), int(grid_bins), _core.NO_AXIS if axis is None else int(axis))
        except ValueError as exc:
            raise ValueError(f"spec {i}: {exc}") from None
        out.append(StatsSpec(int(num_bins), int(grid_bins), None if axis is None else int(axis)))
    return out


def channel_layout(axis: int, shape: Tuple[int, ...], what: str) -> Tuple[int, int]:
    """(channels, inner): the size of the axis and the elements per channel run after it."""
    ax = axis + len(shape) if axis < 0 else axis
    if not 0 <= ax < len(shape):
        raise ValueError(f"{what}: axis {axis} is out of range for an array with {len(shape)} dimensions")
    return shape[ax], math.prod(shape[ax + 1:])


@dataclass
class UpdatePlan:
    work: np.ndarray        # WORK_DTYPE, one entry per tensor of this update
    total: int              # elements in the launch
    axis_work: np.ndarray   # the entries with an axis, their own starts
    axis_total: int
    streams: Set[int]       # producer streams to wait for
    wait_current: bool      # some input carried no stream information


def _table(rows: List[tuple]) -> Tuple[np.ndarray, int]:
    work = np.zeros(len(rows), dtype=WORK_DTYPE)
    if rows:
        cols = list(zip(*rows))
        for name, col in zip(("data", "size", "inner", "channel_keys", "tensor", "flags", "channels"), cols):
            work[name] = col
        sizes = work["size"].astype(np.int64)
        work["start"] = np.cumsum(sizes) - sizes
    total = int(work["size"].sum(dtype=np.uint64)) if rows else 0
    if total >= MAX_LAUNCH_ELEMENTS:
        raise ValueError(f"one update may hold at most 2^40 elements, got {total}")
    return work, total


def plan_update(specs: Sequence[StatsSpec], arrays: Sequence[Any], names: Optional[Sequence[str]],
                channel_counts: List[Optional[int]],
                channel_keys: Callable[[int, int], int]) -> UpdatePlan:
    """Check every input and lay out the work table. None skips a tensor for this update.

    channel_counts[i] is the channel count tensor i had so far (None: not seen yet);
    channel_keys(i, channels) returns the device address of its per-channel keys.
    """
    if len(arrays) != len(specs):
        raise ValueError(f"update got {len(arrays)} arrays for {len(specs)} statistics")
    rows, streams, wait_current = [], set(), False
    for i, (spec, array) in enumerate(zip(specs, arrays)):
        if array is None:
            continue
        what = names[i] if names else f"tensor {i}"
        d = describe(array, what)
        channels = inner = 0
        if spec.axis is not None:
            channels, inner = channel_layout(spec.axis, d.shape, what)
            if channel_counts[i] is not None and channel_counts[i] != channels:
                raise ValueError(f"{what}: axis {spec.axis} has {channels} channels, "
                                 f"earlier updates had {channel_counts[i]}")
        rows.append([d.ptr, d.size, inner, 0, i, FLAG_HALF if d.is_half else 0, channels])
        if d.stream is not None:
            streams.add(d.stream)
        wait_current |= d.wait_current
    for row in rows:  # every input is valid: now channel keys may be allocated
        if row[6] > 0:
            row[3] = channel_keys(row[4], row[6])
    work, total = _table(rows)
    axis_rows = [r for r in rows if r[6] > 0]
    axis_work, axis_total = _table(axis_rows)
    return UpdatePlan(work, total, axis_work, axis_total, streams, wait_current)


def grid_blocks(total: int, max_blocks: int, min_block_elements: int) -> int:
    """Blocks for a launch: enough to keep every block under MAX_BLOCK_ELEMENTS, at most
    max_blocks otherwise, and no block with fewer than min_block_elements when avoidable."""
    wanted = min(max_blocks, max(1, -(-total // max(1, min_block_elements))))
    return max(wanted, -(-total // MAX_BLOCK_ELEMENTS), 1)

