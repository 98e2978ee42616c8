"""Batches for a model: the batch size it takes, samples stacked, prefetched, the data wait timed.

Samples are stacked into batches (`batches`; the same samples give the same batches whatever form they
came in) and the source runs in a producer thread behind a bounded queue (`prefetch`).

One rule for every command: a model with a fixed batch dimension is fed exactly that many samples per
run (the option is overridden, with a note), and the short last batch it cannot take is dropped (with a
note); a dynamic batch is fed `batch_size` samples per run.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..datasource import DataSource, KeyedSample, Sample
from ..errors import ModelError, OptionError
from ..model import InputSpec

Feeds = Dict[str, np.ndarray]


# --- batching and prefetch ---------------------------------------------------------------------------
def batches(samples: Iterable[KeyedSample], batch_size: int) -> Iterator[Tuple[Feeds, int, List[str]]]:
    """Stack samples into batches of batch_size: (feeds, count, keys); a sample whose shapes differ starts
    a new batch."""
    current: List[Sample] = []
    keys: List[str] = []

    def stacked() -> Tuple[Feeds, int, List[str]]:
        return {n: np.stack([s[n] for s in current]) for n in current[0]}, len(current), list(keys)

    for key, s in samples:
        if current and any(s[n].shape != current[0][n].shape for n in s):
            yield stacked()
            current, keys = [], []
        current.append(s)
        keys.append(key)
        if len(current) == batch_size:
            yield stacked()
            current, keys = [], []
    if current:
        yield stacked()


_DONE = object()


def prefetch(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate `items` in a producer thread, at most `depth` items ahead; errors re-raised here."""
    q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_DONE, exc))
        finally:  # close generators here, so their cleanup (decode pool) runs in this thread
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="ptq-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


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


def sample_batches(info: Any, data: Any, samples: int, seed: int, preprocess: Any = None, batch_size: int = 8,
                   threads: Optional[int] = None) -> List[Feeds]:
    """`samples` seeded samples from any data calibrate accepts (images: a seeded subset, as --limit takes
    one), preprocessed once and kept in batches: what analyze measures on and the Q/DQ export's data-driven
    steps learn from. info: ptqengine.model.ModelInfo."""
    import os

    from ..datasource import open_source
    from ..errors import DataError
    from ..preprocess import config_for, plan_for

    if samples < 1:
        raise OptionError(f"--samples must be >= 1, got {samples}")
    workers = threads or os.cpu_count() or 1
    source = open_source(data, info.inputs,
                         lambda: [plan_for(s, config_for(preprocess, s.name)) for s in info.inputs],
                         limit=samples, seed=seed, strict=False, workers=workers, depth=2 * workers)
    out = [batch.feeds for batch in BatchStream(source, info.inputs, batch_size)]
    if not out:
        raise DataError(f"{data}: no usable samples")
    return out
