"""How settled each tensor's range is: the convergence record a calibration run stores, and what it says.

The record (a plain dict in the statistics file's metadata under "convergence"; the scales JSON carries a
summary of it, `json_view`) holds,
at each checkpoint, every tensor's range searched on half A, on half B and on the whole (ptqengine.collect.
convergence). From it:
- the split-half disagreement of a tensor, |amax_A - amax_B| / amax_whole (0 when both are 0);
- the estimate of the whole range's own relative error, `factor` x the disagreement (version 2 records: the
  factor is 1/2, "half the split-half disagreement"; version 1 records judged the disagreement itself, factor 1,
  and are read that way);
- the change of its whole range since the previous checkpoint, |amax_k - amax_k-1| / amax_k;
- per checkpoint, the share of tensors whose estimated error is within the tolerance, and the estimate that
  `share` of the tensors stay within ("estimated within 0.6% on 99% of tensors").
A tensor without a range in a half (no sample yet, or no finite value) counts as not settled.

Why half: a half holds half the samples, so its range scatters about sqrt(2) times as much as the whole's, and
A - B (two independent halves) about 2 times as much; |A - B| / 2 is then one draw from the distribution of the
whole's own error, and the share of tensors with |A - B| / 2 <= TOL estimates the share whose whole range is
within TOL of its limit. Measured against held-out references in benchmarks/README.md (issue 24).

The record comes from files, so `from_dict` checks its shape and raises FormatError naming what is wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import FormatError

RECORD_KEY = "convergence"  # the metadata / JSON entry
RECORD_VERSION = 2  # 2: the rule judges the estimate of the whole's error (factor x disagreement); 1: the disagreement
READABLE_VERSIONS = (1, 2)
# The estimate of the whole range's relative error = ERROR_FACTOR x |A - B| / whole (ptqengine.collect.convergence)
ERROR_FACTOR = 0.5
HALF_DISAGREEMENT = "half the split-half disagreement, |A - B| / 2 / whole"  # the estimate of version 2
DISAGREEMENT = "the split-half disagreement, |A - B| / whole"  # what version 1 judged
SHOWN_MOVING = 3  # tensors named in the summary line
JSON_CURVES = 8  # least settled tensors whose range-vs-images curves the scales JSON carries


@dataclass(frozen=True)
class Checkpoint:
    samples: int  # images folded in so far
    halves: tuple  # (samples in A, samples in B)
    amax_a: np.ndarray  # per tensor (record order); NaN where a half has no range
    amax_b: np.ndarray
    amax: np.ndarray  # the whole

    def disagreement(self) -> np.ndarray:
        """|A - B| / whole per tensor; 0 where A == B (both 0 included), inf where undefined."""
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.abs(self.amax_a - self.amax_b) / np.abs(self.amax)
        d[self.amax_a == self.amax_b] = 0.0
        d[~np.isfinite(d)] = np.inf
        return d

    def estimate(self, factor: float) -> np.ndarray:
        """The estimate of the whole range's relative error per tensor: factor x disagreement (inf stays inf)."""
        return factor * self.disagreement()


def share_within(d: np.ndarray, tolerance: float) -> float:
    return float(np.mean(d <= tolerance)) if d.size else 0.0


def spread_at(d: np.ndarray, share: float) -> float:
    """The smallest x such that at least `share` of the values are <= x."""
    if not d.size:
        return math.inf
    ordered = np.sort(d)
    return float(ordered[max(0, math.ceil(share * d.size - 1e-9) - 1)])


def _floats(values: Any, count: int, what: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != count:
        raise FormatError(f"{what}: expected a list of {count} numbers")
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in values):
        raise FormatError(f"{what}: expected numbers or null")
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FormatError(f"{what}: expected a count, got {value!r}")
    return value


@dataclass(frozen=True)
class ConvergenceRecord:
    tensors: List[str]
    checkpoints: List[Checkpoint]
    algorithm: str
    tolerance: float
    share: float
    stopped: Dict[str, Any]  # {"samples": n, "reason": "..."}
    raw: Dict[str, Any]
    factor: float = ERROR_FACTOR  # estimate of the whole's relative error = factor x the halves' disagreement
    run_algorithm: Optional[str] = None  # the run's own algorithm where the record tracks another view of it

    # --- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, record: Any, source: str = "convergence record") -> "ConvergenceRecord":
        if not isinstance(record, dict) or record.get("version") not in READABLE_VERSIONS:
            raise FormatError(f"{source}: not a version {' or '.join(map(str, READABLE_VERSIONS))} convergence record")
        tensors = record.get("tensors")
        if not isinstance(tensors, list) or not all(isinstance(t, str) for t in tensors):
            raise FormatError(f"{source}: \"tensors\" must be a list of names")
        entries = record.get("checkpoints")
        if not isinstance(entries, list):
            raise FormatError(f"{source}: \"checkpoints\" must be a list")
        n = len(tensors)
        points = []
        for k, c in enumerate(entries):
            where = f"{source}: checkpoint {k}"
            if not isinstance(c, dict) or not isinstance(c.get("halves"), list) or len(c["halves"]) != 2:
                raise FormatError(f"{where}: expected samples, halves [A, B], amax_a, amax_b, amax")
            points.append(Checkpoint(_count(c.get("samples"), f"{where} samples"),
                                     tuple(_count(h, f"{where} halves") for h in c["halves"]),
                                     _floats(c.get("amax_a"), n, f"{where} amax_a"),
                                     _floats(c.get("amax_b"), n, f"{where} amax_b"),
                                     _floats(c.get("amax"), n, f"{where} amax")))
        tolerance, share = record.get("tolerance"), record.get("share")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in (tolerance, share)):
            raise FormatError(f"{source}: tolerance and share must be numbers in (0, 1]")
        stopped = record.get("stopped") if isinstance(record.get("stopped"), dict) else {}
        factor = 1.0  # version 1: the disagreement itself was judged
        if record["version"] >= 2:
            estimate = record.get("estimate")
            factor = estimate.get("factor") if isinstance(estimate, dict) else None
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
                raise FormatError(f"{source}: \"estimate\" must hold a factor in (0, 1]")
        run_algorithm = record.get("run_algorithm")
        if run_algorithm is not None and not isinstance(run_algorithm, str):
            raise FormatError(f"{source}: \"run_algorithm\" must be a name")
        return cls(list(tensors), points, str(record.get("algorithm", "?")), float(tolerance), float(share),
                   dict(stopped), dict(record), float(factor), run_algorithm)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "statistics") -> Optional["ConvergenceRecord"]:
        """The record in a statistics file's metadata, or None when the run did not measure convergence."""
        record = metadata.get(RECORD_KEY)
        return None if record is None else cls.from_dict(record, f"{source}: {RECORD_KEY}")

    # --- what it says --------------------------------------------------------------------------------
    @property
    def last(self) -> Optional[Checkpoint]:
        return self.checkpoints[-1] if self.checkpoints else None

    def change(self, k: int) -> np.ndarray:
        """Relative change of each whole range since checkpoint k-1 (inf at the first checkpoint)."""
        if k <= 0:
            return np.full(len(self.tensors), np.inf)
        now, before = self.checkpoints[k].amax, self.checkpoints[k - 1].amax
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.abs(now - before) / np.abs(now)
        c[now == before] = 0.0
        c[~np.isfinite(c)] = np.inf
        return c

    @property
    def estimate_name(self) -> str:
        """Which estimate of the whole's error the tolerance is compared with (said in the summary line)."""
        if self.factor == 1.0:
            return DISAGREEMENT
        if self.factor == ERROR_FACTOR:
            return HALF_DISAGREEMENT
        return f"{self.factor:g} x the split-half disagreement, {self.factor:g} |A - B| / whole"

    def estimate(self, k: int) -> np.ndarray:
        """The estimated relative error of each whole range at checkpoint k."""
        return self.checkpoints[k].estimate(self.factor)

    def stable(self, k: int) -> bool:
        """The whole's estimated error is within the tolerance on `share` of the tensors at checkpoint k."""
        return share_within(self.estimate(k), self.tolerance) >= self.share

    def moving(self) -> List[str]:
        """Tensors whose estimated error is above the tolerance at the last checkpoint, worst first."""
        if self.last is None:
            return []
        d = self.estimate(len(self.checkpoints) - 1)
        order = sorted((i for i in range(len(d)) if d[i] > self.tolerance), key=lambda i: (-d[i], i))
        return [self.tensors[i] for i in order]

    def least_settled(self, count: int) -> List[str]:
        if self.last is None:
            return []
        d = self.last.disagreement()
        return [self.tensors[i] for i in sorted(range(len(d)), key=lambda i: (-d[i], i))[:count]]

    def summary_line(self) -> str:
        """The one line a run summary shows."""
        last = self.last
        if last is None or not self.tensors:
            return "convergence: no checkpoint reached"
        e = self.estimate(len(self.checkpoints) - 1)
        view = (f"{self.algorithm} ranges" if not self.run_algorithm or self.run_algorithm == self.algorithm else
                f"{self.algorithm} ranges (the view settling is judged on; the run's ranges are {self.run_algorithm})")
        line = (f"after {last.samples:,} images the {view} are estimated within {self.tolerance:.1%} of their limit "
                f"on {share_within(e, self.tolerance):.0%} of tensors (estimate: {self.estimate_name}; median "
                f"{float(np.median(e)):.2%}; {self.share:.0%} of tensors within {spread_at(e, self.share):.1%})")
        moving = self.moving()
        if moving:
            shown = ", ".join(moving[:SHOWN_MOVING]) + (", ..." if len(moving) > SHOWN_MOVING else "")
            line += f"; {len(moving)} tensor(s) still moving: {shown}"
        reason = self.stopped.get("reason")
        if reason:
            line += f" [stopped: {reason}]"
        return line

    def rows(self) -> List[Dict[str, Any]]:
        """Per tensor at the last checkpoint: name, disagreement, change since the previous checkpoint, amax."""
        if self.last is None:
            return []
        k = len(self.checkpoints) - 1
        d, c = self.last.disagreement(), self.change(k)
        return [{"tensor": t, "disagreement": float(d[i]), "estimate": float(self.factor * d[i]),
                 "change": float(c[i]), "amax": float(self.last.amax[i]),
                 "amax_a": float(self.last.amax_a[i]), "amax_b": float(self.last.amax_b[i])}
                for i, t in enumerate(self.tensors)]

    def curves(self, names: Sequence[str]) -> List[Dict[str, Any]]:
        """Range vs images for the named tensors, in that order: {"tensor", "samples", "amax", "amax_a", "amax_b"}."""
        index = {t: i for i, t in enumerate(self.tensors)}
        samples = [c.samples for c in self.checkpoints]
        return [{"tensor": n, "samples": samples, "amax": [float(c.amax[index[n]]) for c in self.checkpoints],
                 "amax_a": [float(c.amax_a[index[n]]) for c in self.checkpoints],
                 "amax_b": [float(c.amax_b[index[n]]) for c in self.checkpoints]}
                for n in names if n in index]

    def settled_since(self) -> List[Optional[int]]:
        """Per tensor: the images at the first checkpoint from which its estimated error stays within the
        tolerance up to the last one (None when it is above it at the last one)."""
        since: List[Optional[int]] = [None] * len(self.tensors)
        running = np.ones(len(self.tensors), dtype=bool)  # within at every checkpoint after this one
        for point in reversed(self.checkpoints):
            running &= point.estimate(self.factor) <= self.tolerance
            for i in np.flatnonzero(running):
                since[i] = point.samples
        return since

    def checkpoint_rows(self) -> List[Dict[str, Any]]:
        """Per checkpoint: images, halves, share of tensors whose estimated error is within the tolerance, the
        estimate `share` of them stay within, the median disagreement and the median change since the previous
        checkpoint."""
        rows = []
        for k, point in enumerate(self.checkpoints):
            d, c = point.disagreement(), self.change(k)
            e = point.estimate(self.factor)
            rows.append({"samples": point.samples, "halves": list(point.halves),
                         "within_tolerance": share_within(e, self.tolerance), "spread": spread_at(e, self.share),
                         "median": float(np.median(d)) if d.size else math.inf,
                         "median_change": float(np.median(c)) if c.size else math.inf})
        return rows


def json_view(record: Mapping[str, Any]) -> Dict[str, Any]:
    """What the scales JSON carries: the summary, the distribution per checkpoint, the curves of the least
    settled tensors, and per tensor its disagreement and since when it is settled."""
    r = ConvergenceRecord.from_dict(record)
    since = r.settled_since()
    rows = r.rows()
    return _finite({
        "algorithm": r.algorithm, "run_algorithm": r.run_algorithm or r.algorithm, "estimate": r.estimate_name,
        "factor": r.factor, "tolerance": r.tolerance, "share": r.share, "order": record.get("order"),
        "split": record.get("split"), "stopped": r.stopped, "summary": r.summary_line(),
        "checkpoints": r.checkpoint_rows(), "curves": r.curves(r.least_settled(JSON_CURVES)),
        "tensors": {row["tensor"]: {"disagreement": row["disagreement"], "estimate": row["estimate"], "settled_since": s}
                    for row, s in zip(rows, since)},
    })


def _finite(value: Any) -> Any:
    """JSON has no NaN / Infinity: non-finite numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
