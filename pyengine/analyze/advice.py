"""Mixed-precision advice: the fewest nodes to keep out of INT8 so the output cosine reaches a target.

Finding the smallest such set exactly is a subset search; this is the usual greedy, with every step
MEASURED rather than predicted (errors of different layers do not add up):
1. Candidates in order of their "all but" gain (sensitivity.py): the node whose exclusion helps most
   with everything else quantised comes first.
2. Add candidates one by one (a few prefixes scored in parallel) until the measured cosine of the
   model with those nodes kept in float reaches the target.
3. Prune: drop each chosen node again, least helpful first, whenever the target still holds without it.
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
from .measure import Bench, Score, goodness
from .sensitivity import NodeSensitivity

StageProgress = Callable[[str, int, Optional[int]], None]
TRT_PRECISION = "fp16"


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
    """Greedy + prune (module docstring). `ranking` may cover a subset of the nodes (--nodes)."""
    check_target(target)
    everything = set(bench.simulator.all_nodes)
    order = sorted(ranking, key=lambda s: (-goodness(s.all_but, "cosine"), s.position))
    labels = {s.position: s.label for s in ranking}
    report = None if progress is None else (lambda done, total: progress("advice", done, total))

    def cosine_without(excluded: Sequence[int]) -> float:
        return bench.score(tuple(sorted(everything - set(excluded))), amax).cosine

    if all_int8.cosine >= target:
        return Advice(target, all_int8.cosine, [], all_int8.cosine, True)
    chosen: List[int] = []
    trace: List[Tuple[str, float]] = []
    reached_cosine: Optional[float] = None
    step = max(1, bench.workers)
    for start in range(0, len(order), step):
        prefixes = [[s.position for s in order[:end]] for end in range(start + 1, min(start + step, len(order)) + 1)]
        scores = bench.score_many([(tuple(sorted(everything - set(p))), amax) for p in prefixes])
        for prefix, score in zip(prefixes, scores):
            trace.append((labels[prefix[-1]], score.cosine))
            if score.cosine >= target:
                chosen, reached_cosine = prefix, score.cosine
                break
        if report is not None:
            report(min(start + step, len(order)), len(order))
        if reached_cosine is not None:
            break
    if reached_cosine is None:  # even all candidates excluded fall short (a --nodes subset): the best prefix
        best = max(range(len(trace)), key=lambda i: (trace[i][1], -i)) if trace else -1
        if best < 0 or trace[best][1] <= all_int8.cosine:
            return Advice(target, all_int8.cosine, [], all_int8.cosine, False, trace)
        names = [labels[s.position] for s in order[:best + 1]]
        return Advice(target, all_int8.cosine, names, trace[best][1], False, trace,
                      [n for n in names if n in set(unnamed)])
    for position in reversed(chosen[:-1]):  # the last one added was needed to cross the target
        trial = [p for p in chosen if p != position]
        cosine = cosine_without(trial)
        if cosine >= target:
            chosen, reached_cosine = trial, cosine
    names = [labels[p] for p in chosen]
    return Advice(target, all_int8.cosine, names, reached_cosine, True, trace,
                  [n for n in names if n in set(unnamed)])
