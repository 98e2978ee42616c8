"""Will a statistics run fit in memory? Estimated before the session is built and before any data is read.

A model is untrusted input: one declaring a 1x3x100000x100000 input, or a chain of 100,000 nodes, would
otherwise run until an allocation fails (a MemoryError or std::bad_alloc traceback, after minutes). The
estimate counts what the run holds at once:
- statistics: one TensorStats per observed tensor, its exact grid of 2 x grid_bins 64-bit counts
  (csrc/tensor_stats.h), grid_bins = the power of two at or above 32 x num_bins (ptqengine.stats);
- a batch: its inputs and every exposed activation, twice (the runner's bound output buffers, and
  onnxruntime's own intermediate values), on the host for CPU runs.
Dims that shape inference leaves unknown count as 1, and the batch dimension as the batch fed: the
estimate is a lower bound, so a run refused here could never have finished.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..datasource import available_memory
from ..errors import OptionError
from ..model import Dim
from ..stats import default_grid_bins
from .observe import Observation

GiB = float(1 << 30)


def stats_bytes(num_bins: int) -> int:
    """Host memory of one TensorStats' grid (see the module docstring)."""
    return 2 * default_grid_bins(num_bins) * 8


def tensor_bytes(shape: Optional[Sequence[Dim]], dtype: np.dtype, batch: int) -> int:
    """Bytes of one tensor of `shape` with dim 0 taken as the batch; unknown dims count as 1."""
    if shape is None:
        return 0
    total = np.dtype(dtype).itemsize
    for i, d in enumerate(shape):
        known = isinstance(d, int) and d > 0
        total *= d if known else batch if i == 0 else 1
    return total


def check_run_memory(observation: Observation, shapes: Dict[str, List[Dim]], batch_size: int, num_bins: int,
                     origin: str, host_activations: bool = True, available: Optional[int] = None) -> None:
    """OptionError saying what to change when a statistics run of this model cannot fit in memory."""
    available = available_memory() if available is None else available
    if available is None:
        return
    statistics = len(observation.observed) * stats_bytes(num_bins)
    batch = 0
    if host_activations:
        batch = sum(tensor_bytes(shapes.get(n), observation.dtypes.get(n, np.float32), batch_size)
                    for n in observation.inputs)
        batch += 2 * sum(tensor_bytes(shapes.get(n), observation.dtypes.get(n, np.float32), batch_size)
                         for n in observation.exposed)
    if statistics + batch <= available:
        return
    advice = []
    if batch > available / 4:
        advice.append("lower --batch-size" if batch_size > 1 else "feed smaller inputs (--size for a dynamic one)")
    if statistics > available / 4:
        advice.append(f"lower --num-bins (statistics of {len(observation.observed)} tensors take "
                      f"{statistics / GiB:.1f} GiB at {num_bins} bins)")
    raise OptionError(f"{origin}: a batch of {batch_size} needs at least {(statistics + batch) / GiB:.1f} GiB "
                      f"(inputs and activations {batch / GiB:.1f} GiB, statistics {statistics / GiB:.1f} GiB) but "
                      f"{available / GiB:.1f} GiB are available: {'; '.join(advice) or 'free memory'}")
