"""Convergence of the ranges, measured while calibrating: the statistics of two halves of the data.

Split: a sample belongs to half A or B by one bit of sha256(its key) (an image's path relative to the data
folder, or "<array origin>[i]"), never by its position, so the split does not depend on order, batching or
sharding. The batcher keeps one pending batch per half (collect.feed), each batch is folded into its half's
statistics, and the full statistics are the merge of the two halves: the histograms are exact, so that is
byte-identical to one pass over everything. Memory: two histogram states instead of one (1 MiB more per tensor
at the default grid), whatever the number of images.

Checkpoints: once each half holds 16, 32, 64, ... images (so at about 32, 64, 128, ... in all), and at the end, each tensor's range is searched with the run's
algorithm on A, on B and on the whole. The split-half disagreement |amax_A - amax_B| / amax_whole measures how
settled a range is: a half holds half the samples, so its range scatters about sqrt(2) times as much as the
whole's and the difference of the halves about twice as much. Half the disagreement (ERROR_FACTOR) is therefore
the estimate of the whole range's own relative error, and what the tolerance means: `--until-stable 1%` asks for
the whole's ranges within 1% of what unlimited data would give. With `until_stable`, reading stops once that
estimate is within the tolerance on `share` of the tensors at two consecutive checkpoints; the images read past
the last full batch of each half are then left out, so the result is exactly the statistics of the images
folded in. (Checked against held-out references: benchmarks/README.md, issue 24.)

Which ranges are judged (`tracked_algorithm`): the run's own algorithm's, except where they are known not to
settle or there is no single algorithm. Entropy's are not judged when stopping: its threshold is the argmin of a
KL curve that often has distant local minima, and more images move it as much as fewer (benchmarks/README.md,
issue 14). With `until_stable` an entropy run (and the default per-tensor choice among the algorithms,
CHOICE) judges settling on SETTLING_VIEW, percentile (99.99) ranges of the same statistics, says so at
the start in one line (`until_stable_notice`), and computes its own ranges on the images read. Measuring
alone (no `until_stable`) keeps tracking entropy's own ranges, so that the record shows how unsettled they are.

Checkpoint cost: two or three range searches per tensor (with "max" the whole is max(A, B), no search), one
tensor per task on `threads` threads (the native searches release the GIL); the whole of an intermediate
checkpoint is searched on a transient copy, the last one merges in place. An intermediate checkpoint runs in the
background while the next batch is inferred (it reads the halves, which nothing changes until the run waits
for it before folding that batch; when it says stop, that batch is left out), so only what inference does not
cover is waited for. At the end the whole's ranges are the run's ranges: the calibration does not search again.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..algorithms import CHOICE, compute_amax, resolve_options
from ..errors import OptionError
from ..stats import TensorStats
from ..formats.convergence import ERROR_FACTOR, RECORD_VERSION, Checkpoint, ConvergenceRecord

log = logging.getLogger(__name__)

SPLIT = "sha256(key)[0] & 1"
FIRST_CHECKPOINT = 32
SETTLING_VIEW = "percentile"  # whose ranges settling is judged on where the run's own do not settle / are chosen
UNSETTLED = {"entropy": "the KL minimum jumps between distant candidates"}  # algorithms known not to settle
Halves = Sequence[Optional[Sequence[TensorStats]]]


def tracked_algorithm(algo: Optional[str], until_stable: bool) -> str:
    """The algorithm whose ranges a convergence run of `algo` checkpoints and judges. None or CHOICE
    (the per-tensor choice, which has no ranges of its own while reading): SETTLING_VIEW. An algorithm of
    UNSETTLED: SETTLING_VIEW when stopping on it (`until_stable`), itself when only measuring."""
    if algo is None or algo == CHOICE:
        return SETTLING_VIEW
    if algo in UNSETTLED and until_stable:
        return SETTLING_VIEW
    return algo


def until_stable_notice(algo: Optional[str]) -> Optional[str]:
    """The one line `--until-stable` says at the start when it judges another algorithm's ranges than the run's
    (None when it judges the run's own)."""
    view = f"{SETTLING_VIEW} ({_VIEW_OPTIONS}) ranges of the same statistics"
    if algo is None or algo == CHOICE:
        return (f"--until-stable: the default run chooses each tensor's range among the algorithms after reading; "
                f"settling is judged on the {view}")
    if algo in UNSETTLED:
        return (f"--until-stable: {algo} ranges are known not to settle ({UNSETTLED[algo]}); settling is judged on "
                f"the {view}, and the {algo} ranges are computed on the images read up to that point")
    return None


_VIEW_OPTIONS = "99.99"  # what resolve_options gives SETTLING_VIEW by default (checked in tests)


def half_of(key: str) -> int:
    """0 (half A) or 1 (half B) for a sample's key."""
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[0] & 1


@dataclass(frozen=True)
class ConvergenceOptions:
    tolerance: float = 0.01  # halves agreeing within this (relative) count as settled
    share: float = 0.99  # ...on this share of the tensors
    until_stable: bool = False  # stop reading once settled at two consecutive checkpoints
    max_images: Optional[int] = None  # read at most this many samples (of the seeded random order)

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise OptionError(f"--until-stable: the tolerance must be in (0, 1), e.g. 0.01 for 1%; got {self.tolerance!r}")
        if not (isinstance(self.share, (int, float)) and 0 < self.share <= 1):
            raise OptionError(f"--stable-share must be in (0, 1], got {self.share!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise OptionError(f"--max-images must be >= 1, got {self.max_images!r}")

    @staticmethod
    def next_after(samples: int) -> int:
        """The first checkpoint size above `samples`: 32, 64, 128, ..."""
        point = FIRST_CHECKPOINT
        while point <= samples:
            point *= 2
        return point


class HalfFold:
    """Two folds of the collection core, one per half, each made at its half's first batch."""

    def __init__(self, make: Callable[[Sequence[Any]], Any], tracker: "SplitHalfTracker") -> None:
        self.make, self.tracker = make, tracker
        self.folds: List[Any] = [None, None]
        self.counts = [0, 0]  # samples folded into each half

    def add(self, arrays: Sequence[Any], slot: int, group: int, count: int) -> None:
        if self.folds[group] is None:
            self.folds[group] = self.make(arrays)
        self.folds[group].add(arrays, slot)
        self.counts[group] += count

    def wait(self, slot: int) -> None:
        for fold in self.folds:
            if fold is not None:
                fold.wait(slot)

    def halves(self) -> List[Optional[List[TensorStats]]]:
        return [None if f is None else f.finish() for f in self.folds]

    def finish(self) -> List[TensorStats]:
        """The full statistics: the halves merged (after the final checkpoint)."""
        return self.tracker.finish(self.halves(), tuple(self.counts))


class SplitHalfTracker:
    """Checkpoints of one statistics run (see the module docstring); `record()` is what the run stores."""

    def __init__(self, options: ConvergenceOptions, algo: Optional[str], algo_options: Dict[str, Any],
                 threads: Optional[int] = None, seed: int = 0, view: Optional[str] = None) -> None:
        """algo: the run's algorithm (None or CHOICE: the per-tensor choice); the record tracks and
        judges `view`, by default `tracked_algorithm(algo, until_stable)`, with algo_options only when that is
        the run's own."""
        self.options = options
        self.run_algo = CHOICE if algo is None else algo
        self.algo = view or tracked_algorithm(algo, options.until_stable)
        self.algo_options = resolve_options(self.algo, dict(algo_options) if self.algo == algo else {})
        notice = until_stable_notice(algo) if options.until_stable and view is None else None
        if notice:
            log.warning(notice)
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.seed = seed
        self.points: List[Checkpoint] = []
        self.next = options.next_after(0)
        self.stop_reason = ""
        self.samples = 0
        self.seconds = 0.0  # spent in checkpoints
        self.waited = 0.0  # of which the run waited for (the rest overlapped the next batch's inference)
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptq-checkpoint")
        self.tensors: List[Tuple[str, int]] = []  # (activation, index among the observed tensors): see bind
        self.shuffled = False

    def bind(self, tensors: Sequence[Tuple[str, int]], shuffled: bool) -> None:
        """The activations the record names (graph order; a copy points at the tensor it copies) and whether
        the data is read in the seeded random order. Stopping is decided on these, as inspect shows them."""
        self.tensors, self.shuffled = list(tensors), shuffled

    # --- during the run ------------------------------------------------------------------------------
    def after_batch(self, samples: int, fold: HalfFold) -> Optional[Future]:
        """Start a checkpoint when one is due (each half holds at least half the checkpoint's size; batches hold
        one half each, so the halves are level within a batch): it runs in the background until `stop`, and
        the halves must not change until then. None when none is due."""
        self.samples = samples
        if 2 * min(fold.counts) < self.next:
            return None
        self.next = self.options.next_after(samples)
        return self.background.submit(self._due, samples, fold.halves(), tuple(fold.counts))

    def stop(self, checkpoint: Future) -> bool:
        """Wait for a checkpoint `after_batch` started; True when reading should stop there."""
        start = time.perf_counter()
        stop = checkpoint.result()
        self.waited += time.perf_counter() - start
        return stop

    def _due(self, samples: int, halves: Halves, counts: Tuple[int, int]) -> bool:
        self._checkpoint(samples, halves, counts, final=False)
        if self.options.until_stable and self._stable_twice():
            self.stop_reason = (f"estimated within {self.options.tolerance:.1%} on >= {self.options.share:.0%} "
                                "of tensors at two consecutive checkpoints")
            return True
        return False

    def finish(self, halves: Halves, counts: Tuple[int, int]) -> List[TensorStats]:
        """The last checkpoint (unless one was just taken) and the merged statistics."""
        self.background.shutdown(wait=True)
        if self.stop_reason:
            self.samples = self.points[-1].samples
            return self._last(halves, counts)
        limit = self.options.max_images
        reason = "max-images reached" if limit and self.samples >= limit else "end of data"
        merged = self._last(halves, counts)
        if self.options.until_stable and not self._stable_twice():
            reason += " before the ranges settled"  # what an --until-stable user came to know
        self.stop_reason = reason
        return merged

    def _last(self, halves: Halves, counts: Tuple[int, int]) -> List[TensorStats]:
        if self.points and self.points[-1].samples == self.samples:
            return [_merged(a, b, in_place=True) for a, b in _pairs(halves)]
        return self._checkpoint(self.samples, halves, counts, final=True)

    def _stable_twice(self) -> bool:
        record = self._record_view()
        return len(self.points) >= 2 and record.stable(len(self.points) - 1) and record.stable(len(self.points) - 2)

    def _record_view(self) -> ConvergenceRecord:
        return ConvergenceRecord.from_dict(self.record())

    def _checkpoint(self, samples: int, halves: Halves, counts: Tuple[int, int], final: bool) -> List[TensorStats]:
        start = time.perf_counter()
        pairs = _pairs(halves)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            results = list(pool.map(lambda pair: self._ranges(*pair, final=final), pairs))
        self.points.append(Checkpoint(samples, counts, *(_array([r[i] for r in results]) for i in range(3))))
        self.seconds += time.perf_counter() - start
        log.info("checkpoint at %d images: %s", samples, self._record_view().summary_line())
        return [r[3] for r in results]

    def _ranges(self, a: Optional[TensorStats], b: Optional[TensorStats], final: bool):
        """(amax A, amax B, amax whole, the whole's statistics when final)."""
        amax_a = None if a is None else self._search(a)
        amax_b = None if b is None else self._search(b)
        if a is None or b is None:
            return amax_a, amax_b, amax_a if b is None else amax_b, a if b is None else b
        whole = _merged(a, b, in_place=final) if final or self.algo != "max" else None
        if self.algo == "max":
            return amax_a, amax_b, _nanmax(amax_a, amax_b), whole
        amax = self._search(whole)
        return amax_a, amax_b, amax, whole if final else None  # a transient copy is dropped at once

    @property
    def ranges_are_the_runs(self) -> bool:
        """Whether the last checkpoint's whole ranges are the run's ranges (else the run searches its own)."""
        return self.algo == self.run_algo

    def _search(self, stats: TensorStats) -> float:
        return float(compute_amax(stats, self.algo, **self.algo_options))

    # --- what the run stores -------------------------------------------------------------------------------
    def record(self) -> Dict[str, Any]:
        """The record for the statistics metadata (ptqengine.formats.convergence)."""
        index = [i for _, i in self.tensors]
        return {
            "version": RECORD_VERSION, "split": SPLIT, "algorithm": self.algo, "options": self.algo_options,
            **({} if self.ranges_are_the_runs else {"run_algorithm": self.run_algo}),
            "estimate": {"of": "the whole range's relative error", "factor": ERROR_FACTOR},
            "tolerance": self.options.tolerance, "share": self.options.share,
            "until_stable": self.options.until_stable, "max_images": self.options.max_images,
            "order": f"seeded random (seed {self.seed})" if self.shuffled else "as given",
            "stopped": {"samples": self.samples, "reason": self.stop_reason},
            "tensors": [n for n, _ in self.tensors],
            "checkpoints": [{"samples": p.samples, "halves": list(p.halves),
                             "amax_a": _json_floats(p.amax_a, index), "amax_b": _json_floats(p.amax_b, index),
                             "amax": _json_floats(p.amax, index)} for p in self.points],
        }


def _pairs(halves: Halves) -> List[Tuple[Optional[TensorStats], Optional[TensorStats]]]:
    a, b = halves
    count = len(a if a is not None else b)
    return [(None if a is None else a[i], None if b is None else b[i]) for i in range(count)]


def _merged(a: Optional[TensorStats], b: Optional[TensorStats], in_place: bool) -> TensorStats:
    if a is None or b is None:
        return a if b is None else b
    return (a if in_place else a.copy()).merge(b)


def _nanmax(a: Optional[float], b: Optional[float]) -> float:
    values = [v for v in (a, b) if v is not None and not math.isnan(v)]
    return max(values) if values else math.nan


def _array(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _json_floats(values, index: Sequence[int]) -> List[Optional[float]]:
    return [None if not math.isfinite(float(values[i])) else float(values[i]) for i in index]
