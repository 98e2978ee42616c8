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
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..datasource import DataSource, KeyedSample, Sample
from ..errors import ModelError, OptionError
from ..model import InputSpec

Feeds = Dict[str, np.ndarray]


@dataclass
class Batch:
    feeds: Feeds  # input name -> C-contiguous array with the batch dimension
    count: int  # samples in it
    keys: List[str] = field(default_factory=list)  # each sample's identity (file path or index), in order
    group: int = 0  # the group all its samples belong to (see `batches`)


# --- batching and prefetch ---------------------------------------------------------------------------
def batches(samples: Iterable[KeyedSample], batch_size: int,
            group: Optional[Callable[[str], int]] = None) -> Iterator["Batch"]:
    """Stack samples into batches of batch_size; a sample whose shapes differ starts a new batch.

    group(key) -> int keeps one pending batch per group, so that every batch holds samples of one group
    only (the two halves of a convergence run). The groups' leftovers come last, lowest group first, one
    sample per batch: short batches of two new sizes would each cost onnxruntime (and the runner's bound
    outputs) the memory of one more batch shape, up to a whole batch of activations; single samples cost
    one small shape. (The statistics do not depend on how samples are batched.)
    """
    pending: Dict[int, Tuple[List[Sample], List[str]]] = {}

    def stacked(g: int) -> Batch:
        current, keys = pending.pop(g)
        return Batch({n: np.stack([s[n] for s in current]) for n in current[0]}, len(current), keys, g)

    for key, s in samples:
        g = 0 if group is None else group(key)
        current = pending.get(g, ([], []))[0]
        if current and any(s[n].shape != current[0][n].shape for n in s):
            yield stacked(g)
        current, keys = pending.setdefault(g, ([], []))
        current.append(s)
        keys.append(key)
        if len(current) == batch_size:
            yield stacked(g)
    for g in sorted(pending):
        if group is None:
            yield stacked(g)
            continue
        for key, s in zip(pending[g][1], pending[g][0]):
            yield Batch({n: a[np.newaxis] for n, a in s.items()}, 1, [key], g)


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


class BatchStream:
    """Iterates a source's samples as model batches; counts what it delivered and the time spent waiting.

    group: see `batches`. A model with a fixed batch cannot take a group's short batch: it is dropped (with
    a note) and the other groups go on; without groups the stream ends at the first short batch, as always.
    """

    def __init__(self, source: DataSource, specs: Sequence[InputSpec], batch_size: int,
                 notes: Optional[List[str]] = None, depth: int = 2,
                 group: Optional[Callable[[str], int]] = None) -> None:
        self.source = source
        self.specs = list(specs)
        self.notes = notes if notes is not None else []
        self.batch_size = run_batch_size(specs, batch_size, self.notes)
        self.fixed = any(s.fixed_batch for s in specs)
        self.depth = depth
        self.group = group
        self.samples = 0
        self.data_wait = 0.0

    def __iter__(self) -> Iterator[Batch]:
        it = iter(prefetch(batches(self.source.samples(), self.batch_size, self.group), depth=self.depth))
        dropped = 0
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            self.data_wait += time.perf_counter() - t0
            if batch is None:
                break
            if batch.count != self.batch_size and self.fixed:
                dropped += batch.count
                if self.group is None:
                    break
                continue
            self.samples += batch.count
            yield Batch({s.name: np.ascontiguousarray(batch.feeds[s.name]) for s in self.specs}, batch.count,
                        batch.keys, batch.group)
        if dropped:
            self.notes.append(f"last {dropped} sample(s) dropped: the model takes exactly {self.batch_size} per run")


def sample_batches(info: Any, data: Any, samples: int, seed: int, preprocess: Any = None, batch_size: int = 8,
                   threads: Optional[int] = None, within: Optional[int] = None) -> List[Feeds]:
    """`samples` seeded samples from any data calibrate accepts (images: a seeded subset, as --limit takes
    one), preprocessed once and kept in batches: what analyze measures on and the Q/DQ export's data-driven
    steps learn from. info: ptqengine.model.ModelInfo. within: the run's --limit; the samples are taken
    from among the ones it read."""
    import os

    from ..datasource import open_source
    from ..errors import DataError
    from ..preprocess import plans_for

    if samples < 1:
        raise OptionError(f"--samples must be >= 1, got {samples}")
    workers = threads or os.cpu_count() or 1
    source = open_source(data, info.inputs,
                         lambda: plans_for(info.inputs, preprocess),
                         limit=samples, seed=seed, strict=False, workers=workers, depth=2 * workers, within=within)
    out = [batch.feeds for batch in BatchStream(source, info.inputs, batch_size)]
    if not out:
        raise DataError(f"{data}: no usable samples")
    return out
