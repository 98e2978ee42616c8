"""Open any file `ptqengine inspect` understands, and compare two scale tables tensor by tensor."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from ..statsfile import MAGIC, StatsBundle, load_stats
from . import KIND_TENSORRT, read_scale_table
from .trt_cache import read_trt_cache

KIND_STATS = "ptqengine-stats"


@dataclass
class ScaleFile:
    """A scale table or statistics file: amax per tensor (absmax for statistics) and what it is."""

    path: Path
    kind: str
    amax: Dict[str, float]
    description: str = ""  # e.g. the TensorRT header, or the samples behind the statistics
    stats: Optional[StatsBundle] = None


def _is_stats_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False  # read_scale_table reports the problem with the right message


def load_scale_file(path: Union[str, Path]) -> ScaleFile:
    p = Path(path)
    if _is_stats_file(p):
        bundle = load_stats(p)
        data = bundle.metadata.get("data")
        samples = bundle.metadata.get("samples", data.get("samples") if isinstance(data, dict) else None)
        description = f"statistics of {samples} samples" if samples is not None else "statistics"
        return ScaleFile(p, KIND_STATS, {n: s.absmax for n, s in bundle.tensors.items()}, description, bundle)
    kind, amax = read_scale_table(p)
    description = ""
    if kind == KIND_TENSORRT:
        cache = read_trt_cache(p)
        description = f"TensorRT {cache.version} ({cache.version_code}), {cache.algorithm}"
    return ScaleFile(p, kind, amax, description)


@dataclass
class TableDiff:
    """Tensors in both tables with amax_b / amax_a, and names found in one table only (file order)."""

    common: List[Tuple[str, float, float, float]] = field(default_factory=list)
    only_a: List[str] = field(default_factory=list)
    only_b: List[str] = field(default_factory=list)

    @property
    def worst_ratio(self) -> float:
        """The ratio furthest from 1 on a log scale (0 and inf count as furthest); 1.0 when none."""
        return max((r for *_, r in self.common), key=ratio_deviation, default=1.0)

    def sort_by_deviation(self) -> None:
        """Largest |log(B/A)| first; undefined ratios (NaN) last; ties keep file order."""
        self.common.sort(key=lambda row: ratio_deviation(row[3]), reverse=True)


def ratio_deviation(ratio: float) -> float:
    """|log(ratio)|: 0 for equal amax, inf for 0 or inf, -1 (sorts last) for NaN."""
    if math.isnan(ratio):
        return -1.0
    if ratio <= 0 or math.isinf(ratio):
        return math.inf
    return abs(math.log(ratio))


def amax_ratio(a: float, b: float) -> float:
    if a == b:
        return 1.0  # also 0 == 0
    if a == 0 or math.isnan(a) or math.isnan(b):
        return math.nan if (math.isnan(a) or math.isnan(b)) else math.inf
    return b / a


def diff_amax(a: Mapping[str, float], b: Mapping[str, float]) -> TableDiff:
    diff = TableDiff()
    for name, value in a.items():
        if name in b:
            diff.common.append((name, value, b[name], amax_ratio(value, b[name])))
        else:
            diff.only_a.append(name)
    diff.only_b = [name for name in b if name not in a]
    return diff
