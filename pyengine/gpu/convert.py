"""Device statistics, once on the host, into ptqengine.TensorStats (pure NumPy + the native core)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from ..stats import TensorStats
from .layout import keys_to_float
from .worklist import StatsSpec


class DeviceStatsError(RuntimeError):
    """Device counts that cannot be right (a bug, never bad input)."""


def to_tensor_stats(spec: StatsSpec, state: np.void, counts: np.ndarray,
                    channel_keys: Optional[np.ndarray], what: str) -> TensorStats:
    """One tensor: its STATE_DTYPE record, its 2 * grid_bins counts, its 2 * channels keys."""
    native = _core.TensorStats(spec.num_bins, spec.grid_bins,
                               _core.NO_AXIS if spec.axis is None else spec.axis)
    count, nans, infs = int(state["count"]), int(state["nan_count"]), int(state["inf_count"])
    if count == 0:
        return TensorStats._wrap(native)
    counted = int(counts.sum(dtype=np.uint64))
    if counted != count - nans - infs:  # every finite value lands in exactly one bin
        raise DeviceStatsError(f"{what}: device histogram holds {counted} values, expected "
                               f"{count - nans - infs} finite of {count}")
    lo, hi = keys_to_float(np.array([state["min_key"], state["max_key"]], dtype=np.int32))
    channel_min = channel_max = None
    if spec.axis is not None:
        if channel_keys is None:
            raise DeviceStatsError(f"{what}: per-channel statistics without channel keys")
        half = len(channel_keys) // 2
        channel_min = keys_to_float(channel_keys[:half])
        channel_max = keys_to_float(channel_keys[half:])
    native.absorb_counts(int(state["exponent"]), np.ascontiguousarray(counts, dtype=np.uint64), count,
                         nans, infs, float(lo), float(hi), channel_min, channel_max)
    return TensorStats._wrap(native)
