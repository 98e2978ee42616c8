"""The calibration settings our statistics justify: small pure functions with documented thresholds.

Horizon calibrates by itself; what it cannot know without running the data is which of its global
switches suit this model. Every rule below is an int8 resolution argument: symmetric int8 has 127 steps
above zero, so a range R times wider than needed costs log2(R) of the 8 bits.

- calibration_type / max_percentile (`choose_calibration`): a tensor is *heavy-tailed* when
  max / p99.99 >= TAIL_RATIO (2): plain max calibration then spends at least one of its 8 bits on the
  top 0.01 % of values. With no more than LIGHT_SHARE (5 %) of tensors heavy, `max` (max_percentile 1.0)
  keeps every value at a cost below one bit on 95 % of tensors. Otherwise, a single global percentile
  (max with max_percentile 0.9999) is chosen when it lands where the per-tensor KL search lands
  (within AGREE_FACTOR 1.25, i.e. a third of a bit) on at least half of the heavy tensors; when it does
  not, `kl`, which picks a threshold per tensor.
- asymmetric (`choose_asymmetric`): a one-sided tensor (min >= -absmax/255, i.e. any negative part is
  under one step of an unsigned 8-bit grid; ReLU / ReLU6 / Sigmoid outputs) wastes the negative half
  of a signed grid: one bit. Asymmetric quantisation never loses range on two-sided tensors, but costs a
  zero point in the arithmetic, so it is chosen when one-sided tensors are at least half (ASYM_SHARE).
- per_channel (`choose_per_channel`): with one scale per tensor, a channel whose range is R times
  below the widest keeps 127 / R steps. A tensor is channel-imbalanced when widest / median channel
  >= CHANNEL_RATIO (16: the median channel keeps under 8 steps, 3 bits). per_channel is chosen when at
  least PER_CHANNEL_SHARE (25 %) of the tensors with channel ranges are imbalanced.
- int16 (`choose_int16`): a tensor is too wide for int8 when amax / median(|x| > 0) >= INT16_RATIO
  (64): half its non-zero values then fall on 2 int8 steps or fewer (>= 25 % rounding error), while int16
  gives them 256 times finer steps. amax is the threshold the chosen calibration uses. Values below
  absmax/2048 count as zero (under 1/16 of a step at max calibration, they round to 0 in int8 anyway).

Thresholds come from these arguments, not from fitting a model; `ptq_summary.md` prints the measured
ratios so users can see how close each tensor is to them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..algorithms import compute_amax_many
from ..statsfile import StatsBundle

TAIL_RATIO = 2.0
LIGHT_SHARE = 0.05
AGREE_FACTOR = 1.25
PERCENTILE = 99.99  # the percentile compared with max and KL
MAX_PERCENTILE = 0.9999  # the same cut in Horizon's units (a fraction; written literally: 99.99 / 100 is not 0.9999)
ASYM_SHARE = 0.5
CHANNEL_RATIO = 16.0
PER_CHANNEL_SHARE = 0.25
INT16_RATIO = 64.0
ZERO_BINS = 2048  # |x| < absmax / ZERO_BINS counts as zero for the int16 median
ONE_SIDED_STEPS = 255  # negative part under absmax / 255 (one unsigned 8-bit step) counts as one-sided


@dataclass(frozen=True)
class TensorFacts:
    """What the statistics say about one activation, named as in the ONNX model."""

    name: str
    node: Optional[str]  # producer node name; None for graph inputs and unnamed nodes
    op_type: Optional[str]
    count: int
    min: float
    max: float
    absmax: float
    amax_max: float
    amax_percentile: float
    amax_entropy: float
    median_nonzero: float
    channel_ratio: Optional[float] = None  # widest / median channel absmax, when measured

    @property
    def tail_ratio(self) -> float:
        return _ratio(self.amax_max, self.amax_percentile)

    @property
    def one_sided(self) -> bool:
        return self.min >= -self.absmax / ONE_SIDED_STEPS

    @property
    def usable(self) -> bool:
        """Worth a decision: a node output with finite, non-zero values (graph inputs are Horizon's own)."""
        return self.op_type not in (None, "Constant") and self.count > 0 and self.absmax > 0 and \
            math.isfinite(self.absmax)


@dataclass(frozen=True)
class CalibrationChoice:
    calibration_type: str  # "kl" or "max"
    max_percentile: Optional[float]  # with "max": 1.0 or PERCENTILE / 100
    reason: str
    heavy: List[str] = field(default_factory=list)

    def amax(self, facts: TensorFacts) -> float:
        """The threshold this choice gives one tensor (as far as our statistics can predict Horizon's)."""
        if self.calibration_type == "kl":
            return facts.amax_entropy
        return facts.amax_max if self.max_percentile in (None, 1.0) else facts.amax_percentile


@dataclass(frozen=True)
class Decision:
    value: bool
    reason: str
    tensors: List[str] = field(default_factory=list)


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.0f} %)" if whole else "0/0"


def median_nonzero(stats) -> float:
    """Median of |x| over values >= absmax / ZERO_BINS, from the 2048-bin histogram over [0, absmax]."""
    if stats.count == 0 or not stats.absmax > 0 or not math.isfinite(stats.absmax):
        return 0.0
    counts, width = stats.search_histogram(ZERO_BINS)
    counts = np.asarray(counts, dtype=np.float64)[1:]
    total = counts.sum()
    if total <= 0:
        return 0.0
    idx = int(np.searchsorted(np.cumsum(counts), total / 2.0))
    return float((idx + 2) * width)  # upper edge of that bin (index shifted by the dropped bin 0)


def tensor_facts(bundle: StatsBundle, producers: Mapping[str, tuple], channel_ratios: Optional[Mapping[str, float]] = None,
                 threads: Optional[int] = None) -> List[TensorFacts]:
    """Facts for every tensor of the bundle (graph order). producers: tensor -> (node name or None, op_type)."""
    names = list(bundle.tensors)
    stats = [bundle.tensors[n] for n in names]
    workers = threads or os.cpu_count() or 1
    by_max = compute_amax_many(stats, "max", threads=workers)
    by_pct = compute_amax_many(stats, "percentile", threads=workers, percentile=PERCENTILE)
    by_kl = compute_amax_many(stats, "entropy", threads=workers)
    ratios = channel_ratios or {}
    facts = []
    for name, s, a_max, a_pct, a_kl in zip(names, stats, by_max, by_pct, by_kl):
        node, op = producers.get(name, (None, None))
        empty = s.count == 0
        facts.append(TensorFacts(name, node, op, int(s.count), 0.0 if empty else float(s.min),
                                 0.0 if empty else float(s.max), 0.0 if empty else float(s.absmax),
                                 float(a_max), float(a_pct), float(a_kl), median_nonzero(s), ratios.get(name)))
    return facts


def choose_calibration(facts: Sequence[TensorFacts]) -> CalibrationChoice:
    usable = [f for f in facts if f.usable]
    heavy = [f for f in usable if f.tail_ratio >= TAIL_RATIO]
    if len(heavy) <= LIGHT_SHARE * len(usable):
        return CalibrationChoice("max", 1.0, f"{_share(len(heavy), len(usable))} tensors have max/p{PERCENTILE:g} "
                                 f">= {TAIL_RATIO:g} (at most {LIGHT_SHARE:.0%} allowed): tails are short, max keeps "
                                 "every value for under one bit", [f.name for f in heavy])
    agree = [f for f in heavy if 1.0 / AGREE_FACTOR <= _ratio(f.amax_entropy, f.amax_percentile) <= AGREE_FACTOR]
    names = [f.name for f in heavy]
    if 2 * len(agree) >= len(heavy):
        return CalibrationChoice("max", MAX_PERCENTILE, f"{_share(len(heavy), len(usable))} tensors are heavy-"
                                 f"tailed (max/p{PERCENTILE:g} >= {TAIL_RATIO:g}); on {_share(len(agree), len(heavy))} "
                                 f"of them p{PERCENTILE:g} is within {AGREE_FACTOR:g}x of the KL threshold, so one "
                                 "global percentile clips them as KL would", names)
    return CalibrationChoice("kl", None, f"{_share(len(heavy), len(usable))} tensors are heavy-tailed (max/"
                             f"p{PERCENTILE:g} >= {TAIL_RATIO:g}) and p{PERCENTILE:g} matches the KL threshold on only "
                             f"{_share(len(agree), len(heavy))} of them: a per-tensor KL search is needed", names)


def choose_asymmetric(facts: Sequence[TensorFacts]) -> Decision:
    usable = [f for f in facts if f.usable]
    one_sided = [f.name for f in usable if f.one_sided]
    chosen = bool(usable) and len(one_sided) >= ASYM_SHARE * len(usable)
    verdict = "at least" if chosen else "under"
    return Decision(chosen, f"{_share(len(one_sided), len(usable))} tensors are one-sided ({verdict} "
                    f"{ASYM_SHARE:.0%}); a signed grid wastes one bit on each", one_sided)


def choose_per_channel(facts: Sequence[TensorFacts]) -> Decision:
    measured = [f for f in facts if f.usable and f.channel_ratio is not None]
    if not measured:
        return Decision(False, "no per-channel ranges measured (statistics file given, or no 3-D/4-D "
                        "activations): per-tensor kept")
    wide = [f.name for f in measured if f.channel_ratio >= CHANNEL_RATIO]
    chosen = len(wide) >= PER_CHANNEL_SHARE * len(measured)
    verdict = "at least" if chosen else "under"
    return Decision(chosen, f"{_share(len(wide), len(measured))} tensors have widest/median channel >= "
                    f"{CHANNEL_RATIO:g} ({verdict} {PER_CHANNEL_SHARE:.0%})", wide)


def int16_ratio(facts: TensorFacts, choice: CalibrationChoice) -> float:
    """amax (as the chosen calibration sets it) over the median non-zero |x|."""
    return _ratio(choice.amax(facts), facts.median_nonzero)


def choose_int16(facts: Sequence[TensorFacts], choice: CalibrationChoice) -> Decision:
    usable = [f for f in facts if f.usable]
    wide = [f.name for f in usable if int16_ratio(f, choice) >= INT16_RATIO]
    return Decision(bool(wide), f"{_share(len(wide), len(usable))} tensors have amax/median(|x|) >= "
                    f"{INT16_RATIO:g}: half their values would sit on 2 int8 steps or fewer", wide)


def channel_ratio(channel_absmax: np.ndarray) -> Optional[float]:
    """Widest channel over the median of the non-zero channels (dead channels say nothing about spread)."""
    values = np.asarray(channel_absmax, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size < 2:
        return None
    return float(values.max() / np.median(values))


def decisions_table(facts: Sequence[TensorFacts], choice: CalibrationChoice) -> Dict[str, Dict[str, float]]:
    """Per tensor: the measured ratios every rule looked at (for the summary)."""
    return {f.name: {"tail": f.tail_ratio, "int16": int16_ratio(f, choice),
                     "channel": f.channel_ratio if f.channel_ratio is not None else float("nan")}
            for f in facts}
