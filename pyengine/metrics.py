"""How far a quantised model's outputs are from the FP32 ones: streamed sums, one definition for every command.

Per model output, over every value of every sample: cosine similarity, SQNR, mean squared / absolute
error and the largest absolute error; for outputs shaped [N, C] (classifiers) or [N, T, C] (sequences,
e.g. CTC recognisers) the share of samples whose argmax over the last axis agrees at every position.
Nothing but running sums is kept, unless top-1 classes are asked for (accuracy against labels).

"Good enough" is one rule for `analyze` (its advice's target) and `evaluate` (its verdict): the worst
output's cosine reaches the target (0.99 by default: the rule of thumb Horizon's toolchain documents for
its users) and, where outputs have classes, the worst agreement reaches AGREEMENT_TARGET.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import DataError, ModelError

COSINE_TARGET = 0.99
AGREEMENT_TARGET = 0.95
METRICS = {"cosine": True, "sqnr": True, "mse": False}  # the figures a search can rank by -> higher is better


@dataclass(frozen=True)
class Score:
    """One output's error, or the worst over a model's outputs (each figure its own worst)."""

    cosine: float
    sqnr_db: float
    mse: float
    top1_agreement: Optional[float] = None  # classifier [N, C] / sequence [N, T, C] outputs

    def value(self, metric: str) -> float:
        return {"cosine": self.cosine, "sqnr": self.sqnr_db, "mse": self.mse}[metric]

    def meets(self, target_cosine: float = COSINE_TARGET) -> bool:
        """The rule in the module docstring."""
        return self.cosine >= target_cosine and (self.top1_agreement is None
                                                 or self.top1_agreement >= AGREEMENT_TARGET)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def worst(scores: Sequence[Score]) -> Score:
    agreements = [s.top1_agreement for s in scores if s.top1_agreement is not None]
    return Score(min(s.cosine for s in scores), min(s.sqnr_db for s in scores), max(s.mse for s in scores),
                 min(agreements) if agreements else None)


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

    def score(self) -> Score:
        return Score(self.cosine, self.sqnr_db, self.mse, self.agreement)


def compare_outputs(reference: Sequence[Sequence[Any]], outputs: Sequence[Sequence[Any]]) -> Score:
    """The worst score of outputs (per batch, per model output) against the reference of the same shape."""
    sums: List[OutputComparison] = []
    for ref_batch, test_batch in zip(reference, outputs):
        if not sums:
            sums = [OutputComparison() for _ in ref_batch]
        for acc, ref, test in zip(sums, ref_batch, test_batch):
            acc.add(ref, test)
    if not sums:
        raise DataError("no samples to compare")
    return worst([s.score() for s in sums])
