"""Batches for a model: the batch size it takes, samples stacked, prefetched, the data wait timed.

One rule for every command: a model with a fixed batch dimension is fed exactly that many samples per
run (the option is overridden, with a note), and the short last batch it cannot take is dropped (with a
note); a dynamic batch is fed `batch_size` samples per run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..datasource import DataSource, batches, prefetch
from ..errors import ModelError, OptionError
from ..model import InputSpec

Feeds = Dict[str, np.ndarray]


def run_batch_size(specs: Sequence[InputSpec], batch_size: int, notes: Optional[List[str]] = None) -> int:
    """The batch a run feeds: the model's fixed batch when it has one, else batch_size."""
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    fixed = sorted({s.fixed_batch for s in specs if s.fixed_batch is not None})
    if len(fixed) > 1:
        raise ModelError(f"inputs have different fixed batch sizes: {fixed}")
    if fixed:
        if fixed[0] != batch_size and notes is not None:
            notes.append(f"the model has a fixed batch of {fixed[0]}: fed {fixed[0]} sample(s) per run")
        return fixed[0]
    return batch_size


@dataclass
class Batch:
    feeds: Feeds  # input name -> C-contiguous array with the batch dimension
    count: int  # samples in it
    keys: List[str] = field(default_factory=list)  # each sample's identity (file path or index), in order


class BatchStream:
    """Iterates a source's samples as model batches; counts what it delivered and the time spent waiting."""

    def __init__(self, source: DataSource, specs: Sequence[InputSpec], batch_size: int,
                 notes: Optional[List[str]] = None, depth: int = 2) -> None:
        self.source = source
        self.specs = list(specs)
        self.notes = notes if notes is not None else []
        self.batch_size = run_batch_size(specs, batch_size, self.notes)
        self.fixed = any(s.fixed_batch for s in specs)
        self.depth = depth
        self.samples = 0
        self.data_wait = 0.0

    def __iter__(self) -> Iterator[Batch]:
        it = iter(prefetch(batches(self.source.samples(), self.batch_size), depth=self.depth))
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            self.data_wait += time.perf_counter() - t0
            if item is None:
                return
            feeds, count, keys = item
            if count != self.batch_size and self.fixed:
                self.notes.append(f"last {count} sample(s) dropped: the model takes exactly {self.batch_size} per run")
                return
            self.samples += count
            yield Batch({s.name: np.ascontiguousarray(feeds[s.name]) for s in self.specs}, count, keys)
