"""Where Q/DQ nodes go: every placement rule of the static Q/DQ export, in this one file.

The rules follow TensorRT's explicit-quantization conventions (TensorRT developer guide, "Explicit
Quantization" and its "Q/DQ Layer-Placement Recommendations":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html),
which NVIDIA ModelOpt's ONNX quantizer also implements
(https://nvidia.github.io/Model-Optimizer/reference/generated/modelopt.onnx.quantization.qdq_graph.html):

1. Weighted ops get Q/DQ on their inputs, never on their outputs: Conv, ConvTranspose, Gemm, MatMul.
   - Activation inputs (data, and a MatMul operand that is not an initializer): per-tensor Q -> DQ with
     scale = amax / 127 from the calibration (TensorRT: "activations-quantization does not support
     per-axis").
   - Weight inputs (float32 initializers): int8 initializer -> DequantizeLinear, per output channel:
     Conv axis 0; ConvTranspose axis 1 (ONNX layout [C_in, C_out/group, ...]; with group > 1 the axis
     does not span the output channels, so such weights are per-tensor); Gemm axis 0 when transB=1
     ([N, K]) else 1 ([K, N]); MatMul axis = last (the output columns). `per_channel=False` makes
     every weight per-tensor.
   - Biases (Conv / Gemm input 2) stay float (TensorRT quantizes no bias; ModelOpt QuantizeBias=False).
   Why: TensorRT runs a layer in int8 only when both its data and weights arrive quantised; Q/DQ on the
   inputs is what tells it so, and int32 accumulation of int8 x int8 is the arithmetic those ops have.
2. Residual Add: TensorRT fuses an Add into the weighted layer producing one of its inputs, so only
   the other, the skip branch, gets Q/DQ. When both inputs come from weighted layers, the one finishing
   later in graph order is taken as the fused main branch and the earlier one as the skip. An Add with
   a constant input (a bias) is no residual and gets nothing.
   Why (accuracy): a Q/DQ on the fused branch would make the simulated model round a value TensorRT
   never rounds (the weighted layer's int32 sum goes straight into the Add); on the skip branch it is
   the int8 tensor TensorRT actually reads. Placement that differs from the engine measures another model.
3. Pooling: AveragePool and GlobalAveragePool are fused with surrounding Q/DQ by TensorRT, so their
   input gets Q/DQ. MaxPool (and Reshape, Transpose) commute with Q/DQ; TensorRT moves the next
   layer's Q/DQ across them itself, so nothing is added there.
   Why: an average of int8 values is computed and requantised inside the fused int8 pooling; max and
   reshuffles select values without changing them, so quantising before or after is the same number.
4. Concat: every quantised tensor among a Concat's inputs and output gets ONE scale, the largest of
   theirs (shared_scale_groups; applied by accuracy.refine, symmetric mode). Why: TensorRT moves the
   output's Q backward across the Concat (it commutes) into each producer; a producer whose output is
   also quantised elsewhere with another scale would need two quantisations, so TensorRT requantises,
   adding a second rounding the Q/DQ model does not show (developer guide: "Concat: give all inputs
   and the output one shared scale"). The largest keeps every member's range: none is clipped more.
   Not placed: ReLU and other activations (TensorRT fuses them; "do not simulate fusion"), normalisation
   (BatchNormalization is folded beforehand, see graph.py), Softmax and everything else: those layers
   run in float.
5. Exclusions: a node matched by an exclude pattern (fnmatch on its name, or its first output when it
   has no name), an excluded op type, or an FP16-fallback node gets no Q/DQ on any of its inputs and keeps
   float weights. A tensor whose calibrated amax is missing, zero or not finite gets no Q/DQ (noted).
6. One Q/DQ pair per tensor, shared by every consumer that asks for it; other consumers keep reading
   the float tensor.
Only the main graph is quantized; subgraphs (If / Loop bodies) are left as they are.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import onnx
from onnx import TensorProto, helper

from .weights import activation_scale

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING_OPS = ("AveragePool", "GlobalAveragePool")
RESIDUAL_OPS = ("Add",)


@dataclass(frozen=True)
class ActivationEdge:
    node: int  # index into graph.node
    input: int  # input slot
    tensor: str


@dataclass(frozen=True)
class WeightEdge:
    node: int
    input: int
    initializer: str
    axis: Optional[int]  # None: per tensor


@dataclass
class QdqPlan:
    activations: List[ActivationEdge] = field(default_factory=list)
    weights: List[WeightEdge] = field(default_factory=list)
    excluded_nodes: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (tensor, reason)

    @property
    def activation_tensors(self) -> List[str]:
        seen: Dict[str, None] = {}
        for edge in self.activations:
            seen.setdefault(edge.tensor, None)
        return list(seen)


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or for a nameless node its first output (else op type and index)."""
    if node.name:
        return node.name
    outputs = [o for o in node.output if o]
    return outputs[0] if outputs else f"{node.op_type}_{index}"


def matches(label: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(label, p) for p in patterns)


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def weight_axis(node: onnx.NodeProto, slot: int, rank: int, per_channel: bool) -> Optional[int]:
    """The output-channel axis of a weight read by `node` at input `slot` (rule 1), None = per tensor."""
    if not per_channel or rank < 2:
        return None
    if node.op_type == "Conv" and slot == 1:
        return 0
    if node.op_type == "ConvTranspose" and slot == 1:
        return 1 if _attr_int(node, "group", 1) == 1 else None
    if node.op_type == "Gemm" and slot == 1:
        return 0 if _attr_int(node, "transB", 0) else 1
    if node.op_type == "MatMul" and slot == 1:
        return rank - 1
    return None


def _weight_slots(node: onnx.NodeProto) -> Tuple[int, ...]:
    """Input slots that hold weights (when they are initializers); the rest are activations."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return (1,)
    return (0, 1)  # MatMul: either operand may be constant


class _Planner:
    def __init__(self, graph: onnx.GraphProto, amax: Mapping[str, float], per_channel: bool,
                 excluded: Set[int]) -> None:
        self.graph = graph
        self.amax = amax
        self.per_channel = per_channel
        self.excluded = excluded
        self.inits = {i.name: i for i in graph.initializer}
        self.producer: Dict[str, int] = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self.plan = QdqPlan()
        self._noted: Set[str] = set()

    def activation(self, index: int, slot: int, tensor: str) -> None:
        if tensor in self.inits:
            return  # a constant operand that is not a float weight (e.g. int): left alone
        if activation_scale(float(self.amax.get(tensor, float("nan")))) is None:
            if tensor not in self._noted:
                self._noted.add(tensor)
                reason = "no calibrated range" if tensor not in self.amax else f"unusable amax {self.amax[tensor]}"
                self.plan.skipped.append((tensor, reason))
            return
        self.plan.activations.append(ActivationEdge(index, slot, tensor))

    def weighted(self, index: int, node: onnx.NodeProto) -> None:
        weight_slots = _weight_slots(node)
        for slot in (0, 1):  # data and weight; the bias (slot 2) stays float
            if slot >= len(node.input) or not node.input[slot]:
                continue
            name = node.input[slot]
            init = self.inits.get(name)
            if init is not None and slot in weight_slots:
                if init.data_type == TensorProto.FLOAT:
                    axis = weight_axis(node, slot, len(init.dims), self.per_channel)
                    self.plan.weights.append(WeightEdge(index, slot, name, axis))
                continue
            self.activation(index, slot, name)

    def residual(self, index: int, node: onnx.NodeProto) -> None:
        if len(node.input) != 2 or any(name in self.inits or not name for name in node.input):
            return
        producers = [self.producer.get(name) for name in node.input]
        weighted = [p is not None and self.graph.node[p].op_type in WEIGHTED_OPS for p in producers]
        if not any(weighted):
            return
        if all(weighted):
            fused = 0 if producers[0] > producers[1] else 1  # the later producer is the main branch
        else:
            fused = weighted.index(True)
        skip = 1 - fused
        self.activation(index, skip, node.input[skip])

    def run(self) -> QdqPlan:
        for index, node in enumerate(self.graph.node):
            if index in self.excluded or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in WEIGHTED_OPS:
                self.weighted(index, node)
            elif node.op_type in RESIDUAL_OPS:
                self.residual(index, node)
            elif node.op_type in POOLING_OPS and node.input:
                self.activation(index, 0, node.input[0])
        return self.plan


def excluded_indices(graph: onnx.GraphProto, patterns: Sequence[str], op_types: Sequence[str],
                     fp16_nodes: Sequence[str]) -> Set[int]:
    """Indices of nodes kept out of int8 (rule 5)."""
    ops = set(op_types)
    names = set(fp16_nodes)
    out: Set[int] = set()
    for index, node in enumerate(graph.node):
        label = node_label(node, index)
        if node.op_type in ops or label in names or matches(label, patterns):
            out.add(index)
    return out


def plan_qdq(graph: onnx.GraphProto, amax: Mapping[str, float], *, per_channel: bool = True,
             exclude: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
             fp16_nodes: Sequence[str] = ()) -> QdqPlan:
    """Apply the rules above to a prepared graph (opset >= 13, BN folded)."""
    excluded = excluded_indices(graph, exclude, exclude_op_types, fp16_nodes)
    plan = _Planner(graph, amax, per_channel, excluded).run()
    plan.excluded_nodes = [node_label(graph.node[i], i) for i in sorted(excluded)]
    return plan


def shared_scale_groups(graph: onnx.GraphProto, plan: QdqPlan) -> List[List[str]]:
    """Quantised tensors that must share one scale (rule 4): a Concat's output and inputs, merged when
    they overlap (a tensor read by two Concats joins both groups into one)."""
    quantised = set(plan.activation_tensors)
    parent: Dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    for node in graph.node:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
            continue
        members = [t for t in list(node.output[:1]) + list(node.input) if t in quantised]
        for t in members[1:]:
            parent[find(t)] = find(members[0])
    groups: Dict[str, List[str]] = {}
    for t in plan.activation_tensors:
        if t in parent:
            groups.setdefault(find(t), []).append(t)
    return [g for g in groups.values() if len(g) > 1]
