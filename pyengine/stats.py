"""Streaming per-tensor statistics: the Python face of the native core (csrc/tensor_stats.h).

`TensorStats` folds arrays in batch by batch and keeps counts, min/max, per-channel min/max and an
exact histogram on a power-of-two grid, so that merging statistics of any split of the data, in
any order, gives the same bytes as one pass over all of it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import numpy as np

from . import _core
from ._dtypes import ACCEPTED_DTYPES

# Grid bins per sign for each search bin. 32 keeps the re-binned search histogram within a small
# fraction of a bin of TensorRT's exact [0, absmax] histogram (see ../shared/REFERENCES.md,
# "histogram grid vs entropy parity"); it costs 1 MiB of counts per tensor at 2048 search bins.
DEFAULT_GRID_FACTOR = 32


def default_grid_bins(num_bins: int) -> int:
    """Grid bins per sign when none are given: the power of two at or above num_bins * DEFAULT_GRID_FACTOR."""
    return 1 << max(int(num_bins) * DEFAULT_GRID_FACTOR - 1, 1).bit_length()


def _as_input(array: Any) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype not in ACCEPTED_DTYPES:
        if a.dtype.kind == "f":  # float64, bfloat-like extensions: values are representable
            a = a.astype(np.float32)
        else:
            raise ValueError(f"expected a floating-point array, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError("cannot update statistics with an empty array")
    # Zero-copy for aligned C-contiguous input; other layouts (and unaligned buffers, e.g. from
    # np.frombuffer at an odd offset) are copied once.
    return np.require(a, requirements=["C", "A"])


def _resolve_threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0  # native default: every core
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


# GPU arrays are counted by ptqengine.gpu, the device side of this layer, which registers its entry points
# here when it is imported (importing ptqengine does it): this module needs nothing from it.
_DEVICE_UPDATES: Dict[str, Callable[["TensorStats", Any], None]] = {}


def register_device_updates(update: Callable[["TensorStats", Any], None],
                            legacy: Callable[["TensorStats", Any], None]) -> None:
    _DEVICE_UPDATES.update(update=update, legacy=legacy)


def _device_updates(kind: str) -> Callable[["TensorStats", Any], None]:
    try:
        return _DEVICE_UPDATES[kind]
    except KeyError:
        raise ValueError("GPU arrays are counted by ptqengine.gpu, which is not loaded (import ptqengine)") from None


class TensorStats:
    """Statistics of one tensor, updated batch by batch.

    num_bins: bins of |x| over [0, absmax] that scale searches see (TensorRT uses 2048).
    axis: channel axis for per-channel min/max (weights: 0 for Conv, 1 for ConvTranspose).
    grid_bins: resolution of the exact power-of-two grid per sign (default 32 * num_bins).
    """

    __slots__ = ("_native",)

    def __init__(self, num_bins: int = 2048, axis: Optional[int] = None, *,
                 grid_bins: Optional[int] = None) -> None:
        if grid_bins is None:
            grid_bins = default_grid_bins(num_bins)
        # Ranges are checked by the core (ValueError), whatever the caller passes.
        self._native = _core.TensorStats(int(num_bins), int(grid_bins),
                                         _core.NO_AXIS if axis is None else int(axis))

    @classmethod
    def _wrap(cls, native: "_core.TensorStats") -> "TensorStats":
        obj = cls.__new__(cls)
        obj._native = native
        return obj

    # --- updating ---------------------------------------------------------------------------
    def update(self, array: Any, threads: Optional[int] = None) -> "TensorStats":
        """Fold an array in (float32 or float16, any shape and strides). Returns self.

        Arrays on a GPU (anything with __cuda_array_interface__: CuPy, PyTorch CUDA tensors) are
        counted there, by ptqengine.gpu's kernels when CuPy is installed, else by the CUDA kernels
        built into the extension; the result is the same, bit for bit, as for the same values on
        the host.
        """
        if getattr(array, "__cuda_array_interface__", None) is not None:
            _device_updates("update")(self, array)
            return self
        self._native.update(_as_input(array), _resolve_threads(threads))
        return self

    def update_device_legacy(self, array: Any) -> "TensorStats":
        """The extension's own CUDA kernels (csrc/cuda/stats_cuda.cu), kept for comparison."""
        _device_updates("legacy")(self, array)
        return self

    def merge(self, other: "TensorStats") -> "TensorStats":
        """Add other's observations to self. Returns self."""
        if not isinstance(other, TensorStats):
            raise TypeError("can only merge TensorStats")
        self._native.merge(other._native)
        return self

    def copy(self) -> "TensorStats":
        return TensorStats.from_bytes(self.to_bytes())

    # --- serialisation ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return self._native.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, memory_limit: Optional[int] = None) -> "TensorStats":
        """Statistics from to_bytes() output (ValueError when malformed, or when they would hold
        more than memory_limit bytes: checked before allocating)."""
        if memory_limit is None:
            return cls._wrap(_core.TensorStats.from_bytes(bytes(data)))
        return cls._wrap(_core.TensorStats.from_bytes(bytes(data), max(int(memory_limit), 0)))

    @staticmethod
    def memory_needed(data: bytes) -> int:
        """Bytes from_bytes(data) would allocate, read from the header alone (ValueError if bad)."""
        return _core.TensorStats.memory_needed(bytes(data))

    @property
    def memory_bytes(self) -> int:
        """Bytes of histogram and channel ranges this object holds."""
        return self._native.memory_bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorStats) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return (f"TensorStats(count={self.count}, min={self.min:.6g}, max={self.max:.6g}, "
                f"nan={self.nan_count}, inf={self.inf_count})")

    # --- read-only properties ---------------------------------------------------------------
    @property
    def num_bins(self) -> int:
        return self._native.num_bins

    @property
    def grid_bins(self) -> int:
        return self._native.grid_bins

    @property
    def axis(self) -> Optional[int]:
        a = self._native.axis
        return None if a == _core.NO_AXIS else a

    @property
    def count(self) -> int:
        """Every element seen, NaN and Inf included."""
        return self._native.count

    @property
    def finite_count(self) -> int:
        return self._native.finite_count

    @property
    def nan_count(self) -> int:
        return self._native.nan_count

    @property
    def inf_count(self) -> int:
        return self._native.inf_count

    @property
    def min(self) -> float:
        """Smallest finite value (NaN when none was seen)."""
        return self._native.min if self.finite_count else float("nan")

    @property
    def max(self) -> float:
        return self._native.max if self.finite_count else float("nan")

    @property
    def absmax(self) -> float:
        return self._native.absmax if self.finite_count else float("nan")

    @property
    def channel_min(self) -> Optional[np.ndarray]:
        """Per-channel finite minimum along `axis` (NaN for a channel without finite values)."""
        return self._channel(self._native.channel_min())

    @property
    def channel_max(self) -> Optional[np.ndarray]:
        return self._channel(self._native.channel_max())

    def _channel(self, values: np.ndarray) -> Optional[np.ndarray]:
        if self.axis is None:
            return None
        values = values.astype(np.float32)
        values[~np.isfinite(values)] = np.nan
        return values

    @property
    def histogram(self) -> np.ndarray:
        """Counts of |x| on the exact grid, up to the bin holding absmax (see `bin_edges`)."""
        counts = self._native.abs_counts()
        return counts[: self._used_bins(counts)]

    @property
    def bin_edges(self) -> np.ndarray:
        n = len(self.histogram)
        return np.arange(n + 1, dtype=np.float64) * self._native.bin_width

    @property
    def signed_histogram(self) -> np.ndarray:
        """Counts of x on the grid, most negative bin first: edges in `signed_bin_edges`."""
        g = self.grid_bins
        counts = self._native.signed_counts()
        neg, pos = counts[g:], counts[:g]
        n = max(self._used_bins(neg), self._used_bins(pos), 1)
        return np.concatenate([neg[:n][::-1], pos[:n]])

    @property
    def signed_bin_edges(self) -> np.ndarray:
        n = len(self.signed_histogram) // 2
        return np.arange(-n, n + 1, dtype=np.float64) * self._native.bin_width

    @staticmethod
    def _used_bins(counts: np.ndarray) -> int:
        nz = np.flatnonzero(counts)
        return int(nz[-1]) + 1 if nz.size else 1

    def search_histogram(self, num_bins: Optional[int] = None) -> tuple[np.ndarray, float]:
        """The histogram scale searches run on: num_bins bins of |x| over [0, absmax]."""
        n = self.num_bins if num_bins is None else int(num_bins)
        absmax = self._native.absmax
        return self._native.search_histogram(n), absmax / n

    
def update_many(stats: Sequence[TensorStats], arrays: Sequence[Any],
                threads: Optional[int] = None) -> None:
    """Update many statistics at once, tensors shared among native threads, GIL released."""
    if len(stats) != len(arrays):
        raise ValueError(f"update_many got {len(stats)} statistics and {len(arrays)} arrays")
    _core.update_many([s._native for s in stats], [_as_input(a) for a in arrays],
                      _resolve_threads(threads))


def merge_all(parts: Iterable[TensorStats]) -> TensorStats:
    """Merge statistics into a new object (the inputs are left unchanged)."""
    it = iter(parts)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("merge_all needs at least one TensorStats") from None
    out = first.copy()
    for p in it:
        out.merge(p)
    return out

