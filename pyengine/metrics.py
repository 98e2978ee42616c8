"""How far a quantised model's outputs are from the FP32 ones: streamed sums, one definition for every command.

Per model output, over every value of every sample: cosine similarity, SQNR, mean squared / absolute
error and the largest absolute error; for outputs shaped [N, C] (classifiers) or [N, T, C] (sequences,
e.g. CTC recognisers) the share of samples whose argmax over the last axis agrees at every position.
Nothing but running sums is kept, unless top-1 classes are asked for (accuracy against labels).

"Good enough" is one rule for `analyze` (its advice's target) and `evaluate` (its verdict): the worst
output's cosine reaches the target (0.99 by default: the rule of thumb Horizon's toolchain documents for
its users) and, where outputs have classes, the worst agreement reaches AGREEMENT_TARGET.

Agreement only means something where FP32 itself has decided. A classifier [N, C] sample is *undecided*
when FP32's top-1 margin (largest minus second largest output) is below the error the cosine target
tolerates: noise uncorrelated with the signal lowers the cosine to 1 / sqrt(1 + noise / signal power), so
a target t allows an RMS error of signal_rms * sqrt(1 / t^2 - 1) (0.14 of the output's RMS at 0.99). An
INT8 model that passes on cosine may flip such a sample. When most samples are undecided (out-of-
distribution images: a classifier's outputs near uniform), top-1 agreement measures noise; the rule then
judges by cosine alone and says so. Sequence outputs [N, T, C] are not checked: one undecided position
among many (blank frames of a CTC recogniser) is ordinary there.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import DataError, ModelError

COSINE_TARGET = 0.99
AGREEMENT_TARGET = 0.95
# Agreement is not meaningful when more than this share of samples is undecided ("most of them").
UNDECIDED_LIMIT = 0.5
METRICS = {"cosine": True, "sqnr": True, "mse": False}  # the figures a search can rank by -> higher is better


@dataclass(frozen=True)
class Score:
    """One output's error, or the worst over a model's outputs (each figure its own worst)."""

    cosine: float
    sqnr_db: float
    mse: float
    top1_agreement: Optional[float] = None  # classifier [N, C] / sequence [N, T, C] outputs
    # share of [N, C] samples FP32 itself has not decided (module docstring); above UNDECIDED_LIMIT
    # `meets` judges by cosine alone
    undecided: Optional[float] = None

    @property
    def agreement_meaningful(self) -> bool:
        return self.undecided is None or self.undecided <= UNDECIDED_LIMIT

    def value(self, metric: str) -> float:
        return {"cosine": self.cosine, "sqnr": self.sqnr_db, "mse": self.mse}[metric]

    def meets(self, target_cosine: float = COSINE_TARGET) -> bool:
        """The rule in the module docstring."""
        return self.cosine >= target_cosine and (self.top1_agreement is None or not self.agreement_meaningful
                                                 or self.top1_agreement >= AGREEMENT_TARGET)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def worst(scores: Sequence[Score]) -> Score:
    """Each figure its own worst. Agreement: the lowest among outputs where it is meaningful; when it is
    meaningful on none, the lowest of all with the largest undecided share (so `meets` leaves it out)."""
    classed = [s for s in scores if s.top1_agreement is not None]
    pool = [s for s in classed if s.agreement_meaningful] or classed
    undecided = [s.undecided for s in pool if s.undecided is not None]
    return Score(min(s.cosine for s in scores), min(s.sqnr_db for s in scores), max(s.mse for s in scores),
                 min(s.top1_agreement for s in pool) if pool else None, max(undecided) if undecided else None)


def tolerated_error(signal_rms: float, target_cosine: float) -> float:
    """The RMS error (uncorrelated with the signal) at which the cosine falls to target_cosine."""
    if target_cosine <= 0:
        return math.inf
    return signal_rms * math.sqrt(max(1.0 / (target_cosine * target_cosine) - 1.0, 0.0))


class OutputComparison:
    """Running sums of one output, reference (FP32) against test (INT8)."""

    def __init__(self, name: str = "", keep_top1: bool = False) -> None:
        self.name = name
        self.dot = self.ref_sq = self.test_sq = self.noise_sq = self.abs_sum = 0.0
        self.max_abs = 0.0
        self.count = 0
        self.agree = self.rows = 0
        self.shape: List[int] = []
        self.keep_top1 = keep_top1
        self.ref_top1: List[np.ndarray] = []  # [N, C] outputs only, with keep_top1
        self.test_top1: List[np.ndarray] = []
        self.margins: List[np.ndarray] = []  # FP32's top-1 margin per sample, [N, C] outputs (4 bytes a sample)

    def add(self, ref: Any, test: Any) -> None:
        ref, test = np.asarray(ref), np.asarray(test)
        if ref.shape != test.shape:
            raise ModelError(f"output {self.name!r}: FP32 shape {list(ref.shape)} but INT8 shape {list(test.shape)}")
        r = ref.astype(np.float64).ravel()
        t = test.astype(np.float64).ravel()
        d = r - t
        self.dot += float(r @ t)
        self.ref_sq += float(r @ r)
        self.test_sq += float(t @ t)
        self.noise_sq += float(d @ d)
        self.abs_sum += float(np.abs(d).sum())
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.count += r.size
        self.shape = list(ref.shape)
        if ref.ndim >= 2 and ref.shape[-1] > 1 and ref.dtype.kind == "f":
            ref_cls, test_cls = ref.argmax(-1), test.argmax(-1)
            same = (ref_cls == test_cls).reshape(ref.shape[0], -1).all(axis=1)
            self.agree += int(same.sum())
            self.rows += int(same.size)
            if ref.ndim == 2:
                top2 = np.partition(ref, -2, axis=-1)[:, -2:].astype(np.float64)
                self.margins.append((top2[:, 1] - top2[:, 0]).astype(np.float32))
            if self.keep_top1 and ref.ndim == 2:
                self.ref_top1.append(ref_cls)
                self.test_top1.append(test_cls)

    @property
    def cosine(self) -> float:
        denominator = math.sqrt(self.ref_sq * self.test_sq)
        return self.dot / denominator if denominator > 0 else (1.0 if self.noise_sq == 0 else 0.0)

    @property
    def sqnr_db(self) -> float:
        if self.noise_sq == 0:
            return math.inf
        return 10 * math.log10(self.ref_sq / self.noise_sq) if self.ref_sq > 0 else -math.inf

    @property
    def mse(self) -> float:
        return self.noise_sq / self.count if self.count else 0.0

    @property
    def mean_abs_error(self) -> float:
        return self.abs_sum / self.count if self.count else 0.0

    @property
    def agreement(self) -> Optional[float]:
        return self.agree / self.rows if self.rows else None

    def undecided(self, target_cosine: float = COSINE_TARGET) -> Optional[float]:
        """Share of [N, C] samples whose FP32 top-1 margin is below the error target_cosine tolerates."""
        if not self.margins or not self.count:
            return None
        margins = np.concatenate(self.margins)
        limit = tolerated_error(math.sqrt(self.ref_sq / self.count), target_cosine)
        return float(np.mean(margins < limit))

    def score(self, target_cosine: float = COSINE_TARGET) -> Score:
        return Score(self.cosine, self.sqnr_db, self.mse, self.agreement, self.undecided(target_cosine))


def compare_outputs(reference: Sequence[Sequence[Any]], outputs: Sequence[Sequence[Any]],
                    target_cosine: float = COSINE_TARGET) -> Score:
    """The worst score of outputs (per batch, per model output) against the reference of the same shape."""
    sums: List[OutputComparison] = []
    for ref_batch, test_batch in zip(reference, outputs):
        if not sums:
            sums = [OutputComparison() for _ in ref_batch]
        for acc, ref, test in zip(sums, ref_batch, test_batch):
            acc.add(ref, test)
    if not sums:
        raise DataError("no samples to compare")
    return worst([s.score(target_cosine) for s in sums])
