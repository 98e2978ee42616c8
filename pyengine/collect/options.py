"""The options every run over data takes, checked once: batch size, sample subset, threads, device,
preprocessing, strictness and histogram bins."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Union

from ..errors import OptionError
from ..preprocess import PreprocessConfig
from .device import CPU, Device, parse_device

Preprocess = Union[PreprocessConfig, Mapping[str, PreprocessConfig], None]


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 8
    limit: Optional[int] = None  # a seeded sample of that many images; the first N samples of array data
    seed: int = 0
    threads: Optional[int] = None  # CPU threads (None: every core)
    preprocess: Preprocess = None
    strict: bool = False  # an unreadable image fails the run instead of being skipped
    num_bins: int = 2048
    device: Device = CPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", parse_device(self.device))
        for name, least in (("batch_size", 1), ("limit", 1), ("threads", 1), ("num_bins", 16)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise OptionError(f"{name} must be >= {least}, got {value!r}")

    def but(self, **changes: Any) -> "RunOptions":
        return replace(self, **changes)
