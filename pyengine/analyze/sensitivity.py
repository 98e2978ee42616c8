"""Per-node sensitivity: how much each quantised node alone costs, and how much keeping it in float gains.

Two runs per node, as Horizon's and TensorRT users' debugging goes:
- "alone": only this node quantised (its weights and its input activations), everything else FP32.
  The damage this node does by itself.
- "all but": everything quantised except this node. Compared with the fully quantised model, the gain
  of keeping this node in higher precision, with all the others' error present (errors interact, so
  this is what mixed-precision advice starts from).
The ranking puts the node whose "alone" score is worst first (ties: the larger "all but" gain).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..errors import OptionError
from .measure import Bench, Score, goodness
from .simulate import QuantNode

StageProgress = Callable[[str, int, Optional[int]], None]


@dataclass
class NodeSensitivity:
    label: str
    op_type: str
    position: int  # into QuantSimulator.nodes
    activations: List[str]
    weights: List[str]
    thresholds: Dict[str, float]  # activation tensor -> amax used
    alone: Score
    all_but: Score
    rank: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return {"rank": self.rank, "node": self.label, "type": self.op_type, "activations": self.activations,
                "weights": self.weights, "thresholds": self.thresholds, "alone": self.alone.to_dict(),
                "all_but": self.all_but.to_dict()}


def select_nodes(nodes: Sequence[QuantNode], patterns: Optional[Sequence[str]]) -> List[int]:
    """Positions of the nodes whose label matches any fnmatch pattern (all nodes when patterns is None)."""
    if not patterns:
        return list(range(len(nodes)))
    chosen = [k for k, n in enumerate(nodes) if any(fnmatch.fnmatchcase(n.label, p) for p in patterns)]
    if not chosen:
        raise OptionError(f"--nodes {' '.join(patterns)}: matches none of the {len(nodes)} quantised nodes")
    return chosen


def node_sensitivity(bench: Bench, amax: Mapping[str, float], metric: str, positions: Optional[Sequence[int]] = None,
                     progress: Optional[StageProgress] = None) -> List[NodeSensitivity]:
    """Score every node (or those at `positions`) alone and all-but; ranked, most sensitive first."""
    nodes = bench.simulator.nodes
    chosen = list(range(len(nodes))) if positions is None else list(positions)
    everything = set(bench.simulator.all_nodes)
    configs = [((k,), amax) for k in chosen] + [(tuple(sorted(everything - {k})), amax) for k in chosen]
    report = None if progress is None else (lambda done, total: progress("sensitivity", done, total))
    scores = bench.score_many(configs, report)
    out = []
    for i, k in enumerate(chosen):
        node = nodes[k]
        out.append(NodeSensitivity(node.label, node.op_type, k, list(node.activations), list(node.weights),
                                   {t: float(amax[t]) for t in node.activations if t in amax},
                                   scores[i], scores[len(chosen) + i]))
    out.sort(key=lambda s: (goodness(s.alone, metric), -goodness(s.all_but, metric), s.position))
    for rank, s in enumerate(out, 1):
        s.rank = rank
    return out
