"""Samples, FP32 reference outputs and the score of one quantisation configuration against them.

Scores compare the model outputs of a configuration with the FP32 outputs over all samples at once
(as `evaluate` does: one cosine / SQNR over every value of an output), then take the WORST output for
models with several. `METRICS` says which way is better; `goodness` turns any metric into
higher-is-better so the searches need no special cases.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..datasource import batches as make_batches
from ..datasource import open_source
from ..errors import DataError, OptionError
from ..model import ModelInfo
from ..preprocess import config_for, plan_for
from .simulate import Feeds, QuantSimulator, make_session

log = logging.getLogger(__name__)

METRICS = {"cosine": True, "sqnr": True, "mse": False}  # name -> higher is better
Config = Tuple[Collection[int], Mapping[str, float]]  # (positions of quantised nodes, amax)
RunProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Score:
    """FP32 vs one configuration, worst over the model outputs."""

    cosine: float
    sqnr_db: float
    mse: float
    top1_agreement: Optional[float] = None  # classifier [N, C] / sequence [N, T, C] outputs

    def value(self, metric: str) -> float:
        return {"cosine": self.cosine, "sqnr": self.sqnr_db, "mse": self.mse}[metric]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise OptionError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def goodness(score: Score, metric: str) -> float:
    """Higher is better, for every metric."""
    v = score.value(metric)
    return v if METRICS[metric] else -v


class _OutputSums:
    def __init__(self) -> None:
        self.dot = self.ref_sq = self.test_sq = self.noise_sq = 0.0
        self.count = 0
        self.agree = self.rows = 0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        r = ref.astype(np.float64).ravel()
        t = test.astype(np.float64).ravel()
        d = r - t
        self.dot += float(r @ t)
        self.ref_sq += float(r @ r)
        self.test_sq += float(t @ t)
        self.noise_sq += float(d @ d)
        self.count += r.size
        if ref.ndim >= 2 and ref.shape[-1] > 1:  # argmax agreement, every position of a sample
            same = (ref.argmax(-1) == test.argmax(-1)).reshape(ref.shape[0], -1).all(axis=1)
            self.agree += int(same.sum())
            self.rows += int(same.size)

    def score(self) -> Score:
        denominator = math.sqrt(self.ref_sq * self.test_sq)
        cosine = self.dot / denominator if denominator > 0 else (1.0 if self.noise_sq == 0 else 0.0)
        if self.noise_sq == 0:
            sqnr = math.inf
        else:
            sqnr = 10 * math.log10(self.ref_sq / self.noise_sq) if self.ref_sq > 0 else -math.inf
        mse = self.noise_sq / self.count if self.count else 0.0
        return Score(cosine, sqnr, mse, self.agree / self.rows if self.rows else None)


def _worst(scores: Sequence[Score]) -> Score:
    agreements = [s.top1_agreement for s in scores if s.top1_agreement is not None]
    return Score(min(s.cosine for s in scores), min(s.sqnr_db for s in scores), max(s.mse for s in scores),
                 min(agreements) if agreements else None)


def compare(reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray]]) -> Score:
    """Score of outputs (per batch, per model output) against the reference of the same shape."""
    sums: List[_OutputSums] = []
    for ref_batch, test_batch in zip(reference, outputs):
        if not sums:
            sums = [_OutputSums() for _ in ref_batch]
        for acc, ref, test in zip(sums, ref_batch, test_batch):
            acc.add(np.asarray(ref), np.asarray(test))
    if not sums:
        raise DataError("no samples to compare")
    return _worst([s.score() for s in sums])


def load_samples(info: ModelInfo, data: Any, samples: int, seed: int, preprocess: Any = None,
                 batch_size: int = 8, threads: Optional[int] = None) -> List[Feeds]:
    """`samples` seeded samples from any data calibrate accepts, preprocessed once, in batches."""
    if samples < 1:
        raise OptionError(f"--samples must be >= 1, got {samples}")
    fixed = info.inputs[0].fixed_batch if info.inputs else None
    workers = threads or os.cpu_count() or 1
    source = open_source(data, info.inputs,
                         lambda: [plan_for(s, config_for(preprocess, s.name)) for s in info.inputs],
                         limit=samples, seed=seed, strict=False, workers=workers, depth=2 * workers)
    out = []
    for feeds, count in make_batches(source.samples(), fixed or batch_size):
        if fixed and count != fixed:
            break  # a fixed-batch model cannot take the short last batch
        out.append({n: np.ascontiguousarray(a) for n, a in feeds.items()})
    if not out:
        raise DataError(f"{data}: no usable samples")
    return out


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
        sums: List[_OutputSums] = []
        for ref_batch, test_batch in zip(self.reference, self.simulator.run(self.batches, nodes_on, amax)):
            if not sums:
                sums = [_OutputSums() for _ in ref_batch]
            for acc, ref, test in zip(sums, ref_batch, test_batch):
                acc.add(ref, test)
        return _worst([s.score() for s in sums])

    def score_model(self, model: "onnx.ModelProto") -> Score:
        """Score a whole model (e.g. the real Q/DQ export) whose inputs and outputs are the prepared model's."""
        session = make_session(model, self.simulator.origin, self.simulator.threads)
        names = self.simulator.output_names
        self._count()
        return compare(self.reference, [session.run(names, feeds) for feeds in self.batches])

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
