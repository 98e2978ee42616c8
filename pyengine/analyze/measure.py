"""Samples, FP32 reference outputs and the score of one quantisation configuration against them.

Scores compare the model outputs of a configuration with the FP32 outputs over all samples at once
(ptqengine.metrics, as `evaluate` does: one cosine / SQNR over every value of an output), then take the
WORST output for models with several. `METRICS` says which way is better; `goodness` turns any metric into
higher-is-better so the searches need no special cases.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Collection, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..errors import OptionError
from ..metrics import COSINE_TARGET, METRICS, Score, compare_outputs
from .simulate import Feeds, QuantSimulator

log = logging.getLogger(__name__)

Config = Tuple[Collection[int], Mapping[str, float]]  # (positions of quantised nodes, amax)
RunProgress = Callable[[int, int], None]


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise OptionError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def goodness(score: Score, metric: str) -> float:
    """Higher is better, for every metric."""
    v = score.value(metric)
    return v if METRICS[metric] else -v


class Bench:
    """Samples + FP32 reference; scores configurations, several at once on a thread pool.

    onnxruntime releases the GIL while it runs, so `workers` sessions of one thread each keep the cores
    busy better than one session with several threads on these small unfused graphs. Every configuration
    is computed on its own, so results do not depend on `workers`.
    """

    def __init__(self, simulator: QuantSimulator, batches: Sequence[Feeds], workers: int = 1,
                 reference: Optional[Sequence[List[np.ndarray]]] = None, counter: Optional["Bench"] = None) -> None:
        self.simulator = simulator
        self.batches = list(batches)
        self.workers = max(1, int(workers))
        self.reference = list(reference) if reference is not None else list(simulator.run(self.batches, (), {}))
        self._runs = 0  # configurations scored (for the report's cost line)
        self._counter = counter  # a parent bench whose count this one adds to
        self._lock = threading.Lock()
        # which samples FP32 leaves undecided depends on the target (ptqengine.metrics); halves share it
        self.target_cosine = counter.target_cosine if counter is not None else COSINE_TARGET

    @property
    def runs(self) -> int:
        return self._runs

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self._runs += n
        if self._counter is not None:
            self._counter._count(n)

    def halves(self) -> Optional[Tuple["Bench", "Bench"]]:
        """Two benches on alternate batches (fit, check), sharing the reference; None with one batch."""
        if len(self.batches) < 2:
            return None
        return tuple(Bench(self.simulator, self.batches[i::2], self.workers, self.reference[i::2], self)
                     for i in (0, 1))  # type: ignore[return-value]

    @property
    def samples(self) -> int:
        return sum(int(next(iter(b.values())).shape[0]) for b in self.batches)

    def score(self, nodes_on: Collection[int], amax: Mapping[str, float]) -> Score:
        self._count()
        return compare_outputs(self.reference, list(self.simulator.run(self.batches, nodes_on, amax)),
                               self.target_cosine)

    def score_model(self, model: "onnx.ModelProto") -> Score:
        """Score a whole model (e.g. the real Q/DQ export) whose inputs and outputs are the prepared model's."""
        self._count()
        return compare_outputs(self.reference, list(self.simulator.run_model(model, self.batches)),
                               self.target_cosine)

    def score_many(self, configs: Sequence[Config], progress: Optional[RunProgress] = None,
                   until: Optional[Callable[[Score], bool]] = None) -> List[Score]:
        """Scores in the order of configs; progress(done, len(configs)) after each.

        until: the caller stops at the first score meeting it; configurations after that one were
        run only because they ran alongside it, so they are not counted: the report's cost is then
        the same for any number of workers."""
        results = self._score_all(configs, progress)
        if until is not None:
            first = next((i for i, r in enumerate(results) if until(r)), len(results) - 1)
            self._count(-(len(results) - 1 - first))
        return results

    def _score_all(self, configs: Sequence[Config], progress: Optional[RunProgress]) -> List[Score]:
        results: List[Optional[Score]] = [None] * len(configs)
        if progress is not None:
            progress(0, len(configs))
        if self.workers == 1 or len(configs) == 1:
            for i, (nodes_on, amax) in enumerate(configs):
                results[i] = self.score(nodes_on, amax)
                if progress is not None:
                    progress(i + 1, len(configs))
            return results  # type: ignore[return-value]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ptq-analyze") as pool:
            futures = [pool.submit(self.score, nodes_on, amax) for nodes_on, amax in configs]
            for i, future in enumerate(futures):
                results[i] = future.result()
                if progress is not None:
                    progress(i + 1, len(configs))
        return results  # type: ignore[return-value]
