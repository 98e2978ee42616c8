"""Per tensor, the range that makes each quantised layer's OWN output closest to FP32; bias correction.

The question a range search answers is "which amax loses least", and the loss that matters is that of the
layers reading the tensor, not of the tensor itself: a Conv sums many inputs, so clipping noise and
rounding noise weigh differently there than in a histogram. Each calibration algorithm (max, entropy,
percentile, mse: their amax from the statistics already collected) proposes a candidate; for every
quantised activation tensor, one small onnxruntime graph computes, on the same FP32 calibration inputs,

    y = op(x, W)   and, per candidate k,   y_k = op(DQ(Q(x, amax_k / 127)), DQ(W_q))

for every weighted layer reading x (Conv, ConvTranspose, Gemm, MatMul with a constant operand), and
sum (y - y_k)^2; for other readers of the tensor (residual Add, pooling) the error of x itself. The
candidate with the least summed error is kept. Local: one layer at a time, no whole-model runs, so the
cost is about (1 + candidates) FP32 forward passes over the samples (Nagel et al. 2021, "A White Paper
on Neural Network Quantization", section 3.4: layer-wise output MSE as the range criterion;
https://arxiv.org/abs/2106.08295).

Bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2, empirical form with
calibration data; https://arxiv.org/abs/1906.04721): int8 weights and a clipped input shift each output
channel's mean by E[y - y_k] (known to matter for depthwise convolutions, whose channels sum only 9
products). The same graphs accumulate that mean per output channel for the chosen candidate; it is added
to the layer's float bias (Gemm: divided by beta; a MatMul: to the constant of the Add that follows it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .capture import Feeds, Sessions, capture
from .placement import QdqPlan
from .weights import QParams

log = logging.getLogger(__name__)

MIN_RELATIVE_GAP = 1e-3  # candidates closer than this (relative) are the same candidate


@dataclass
class LocalResult:
    qparams: Dict[str, QParams]  # the chosen candidate of every tensor tried
    chosen: Dict[str, int] = field(default_factory=dict)  # tensor -> index of the chosen candidate
    errors: Dict[str, List[float]] = field(default_factory=dict)  # tensor -> summed error per candidate
    bias_delta: Dict[int, np.ndarray] = field(default_factory=dict)  # node index -> E[y - y_q] per channel
    weight_bias_delta: Dict[int, np.ndarray] = field(default_factory=dict)  # node -> E[(W - W_q) x] per channel


@dataclass
class _Reader:
    node: int
    slot: int
    weight: Optional[Tuple[int, np.ndarray, np.ndarray]] = None  # (weight slot, float W, dequantised W_q)


def unique_candidates(values: Sequence[Optional[QParams]]) -> List[QParams]:
    """Candidates in order, without None and without near-duplicates (same zero point, scale within 0.1%)."""
    out: List[QParams] = []
    for v in values:
        if v is None:
            continue
        if all(v.zero_point != u.zero_point or v.signed != u.signed
               or abs(v.scale - u.scale) > MIN_RELATIVE_GAP * max(u.scale, v.scale) for u in out):
            out.append(v)
    return out


def _readers(graph: onnx.GraphProto, plan: QdqPlan, dequantized: Mapping[Tuple[int, int], np.ndarray],
             floats: Mapping[Tuple[int, int], np.ndarray]) -> Dict[str, List[_Reader]]:
    out: Dict[str, List[_Reader]] = {}
    for edge in plan.activations:
        node = graph.node[edge.node]
        reader = _Reader(edge.node, edge.input)
        other = 1 - edge.input if edge.input in (0, 1) else -1
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and edge.input == 0 \
                and (edge.node, other) in dequantized:
            reader.weight = (other, floats[(edge.node, other)], dequantized[(edge.node, other)])
        out.setdefault(edge.tensor, []).append(reader)
    return out


def _reduce_axes(op_type: str, rank: int) -> List[int]:
    """Axes summed for a per-output-channel mean: all but 1 for convolutions, all but the last otherwise."""
    return [a for a in range(rank) if a != 1] if op_type in ("Conv", "ConvTranspose") else list(range(rank - 1))


class _TensorGraph:
    """The small graph of one tensor: candidates' Q/DQ, its readers with float and quantised weights."""

    def __init__(self, graph: onnx.GraphProto, tensor: str, readers: List[_Reader], candidates: List[QParams],
                 opset: int, rank: int, weights_rank: Dict[int, int], sessions: Sessions) -> None:
        self.tensor, self.readers, self.candidates = tensor, readers, candidates
        nodes, inits, outputs = [], [], []
        for k, params in enumerate(candidates):
            inits += [numpy_helper.from_array(np.array(params.scale, np.float32), f"s{k}"),
                      numpy_helper.from_array(params.zero_point_array(), f"zp{k}")]
            nodes += [helper.make_node("QuantizeLinear", ["x", f"s{k}", f"zp{k}"], [f"q{k}"]),
                      helper.make_node("DequantizeLinear", [f"q{k}", f"s{k}", f"zp{k}"], [f"xq{k}"])]
        self.weighted = [r for r in readers if r.weight is not None]
        self.plain = len(self.weighted) < len(readers)
        for i, reader in enumerate(self.weighted):
            source = graph.node[reader.node]
            slot, w, wq = reader.weight
            inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                      numpy_helper.from_array(wq.astype(np.float32), f"wq{i}")]
            y_rank = rank if source.op_type != "MatMul" else max(rank, weights_rank[i])
            axes = numpy_helper.from_array(np.array(_reduce_axes(source.op_type, y_rank), np.int64), f"axes{i}")
            inits.append(axes)
            nodes.append(self._copy(source, "x", f"w{i}", slot, f"y{i}"))
            nodes += [helper.make_node("Shape", [f"y{i}"], [f"shape{i}"]),
                      self._copy(source, "x", f"wq{i}", slot, f"yw{i}"),  # weights alone quantised
                      helper.make_node("Sub", [f"y{i}", f"yw{i}"], [f"dw{i}"]),
                      helper.make_node("ReduceSum", [f"dw{i}", f"axes{i}"], [f"mw{i}"], keepdims=0)]
            outputs += [f"shape{i}", f"mw{i}"]
            for k in range(len(candidates)):
                nodes += [self._copy(source, f"xq{k}", f"wq{i}", slot, f"y{i}_{k}"),
                          helper.make_node("Sub", [f"y{i}", f"y{i}_{k}"], [f"d{i}_{k}"]),
                          helper.make_node("ReduceSumSquare", [f"d{i}_{k}"], [f"e{i}_{k}"], keepdims=0),
                          helper.make_node("ReduceSum", [f"d{i}_{k}", f"axes{i}"], [f"m{i}_{k}"], keepdims=0)]
                outputs += [f"e{i}_{k}", f"m{i}_{k}"]
        if self.plain:
            for k in range(len(candidates)):
                nodes += [helper.make_node("Sub", ["x", f"xq{k}"], [f"dx{k}"]),
                          helper.make_node("ReduceSumSquare", [f"dx{k}"], [f"ex{k}"], keepdims=0)]
                outputs.append(f"ex{k}")
        g = helper.make_graph(nodes, "local", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_empty_tensor_value_info(o) for o in outputs], initializer=inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        self.outputs = outputs
        self.session = sessions(model, f"range search of {tensor}", True)
        self.errors = np.zeros(len(candidates))
        self.sums = [np.zeros((len(candidates), 1)) for _ in self.weighted]
        self.weight_sums = [np.zeros(1) for _ in self.weighted]
        self.counts = np.zeros(len(self.weighted))

    @staticmethod
    def _copy(source: onnx.NodeProto, x: str, w: str, w_slot: int, out: str) -> onnx.NodeProto:
        inputs = [x, w] if w_slot == 1 else [w, x]
        node = helper.make_node(source.op_type, inputs, [out])
        node.attribute.extend(source.attribute)
        return node

    def add(self, x: np.ndarray) -> None:
        values = dict(zip(self.outputs, self.session.run(self.outputs, {"x": x.astype(np.float32, copy=False)})))
        for k in range(len(self.candidates)):
            self.errors[k] += sum(float(values[f"e{i}_{k}"]) for i in range(len(self.weighted)))
            if self.plain:
                self.errors[k] += float(values[f"ex{k}"])
        for i in range(len(self.weighted)):
            means = np.stack([np.asarray(values[f"m{i}_{k}"], np.float64).reshape(-1)
                              for k in range(len(self.candidates))])
            if self.sums[i].shape != means.shape:
                self.sums[i] = np.zeros_like(means)
            self.sums[i] += means
            weight_only = np.asarray(values[f"mw{i}"], np.float64).reshape(-1)
            self.weight_sums[i] = self.weight_sums[i] + weight_only
            shape = values[f"shape{i}"]
            self.counts[i] += float(np.prod(shape)) / max(means.shape[1], 1)


def choose_ranges(model: onnx.ModelProto, plan: QdqPlan, candidates: Mapping[str, Sequence[Optional[QParams]]],
                  dequantized: Mapping[Tuple[int, int], np.ndarray], batches: Sequence[Feeds], origin: str,
                  sessions: Sessions, progress: Optional[Callable[[int, int], None]] = None) -> LocalResult:
    """The module docstring's search on `batches`; `candidates[t][0]` is kept when errors tie.

    dequantized: (node index, weight slot) -> the float values of the weight's int8 form (what DQ gives).
    progress(batches done, batches): after each batch.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    floats = {key: numpy_helper.to_array(inits[graph.node[key[0]].input[key[1]]]) for key in dequantized}
    readers = _readers(graph, plan, dequantized, floats)
    tensors = {t: unique_candidates(candidates.get(t, ())) for t in readers}
    tensors = {t: c for t, c in tensors.items() if c}
    opset = max(13, *(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    graphs: Dict[str, _TensorGraph] = {}
    done = 0
    for values in capture(model, list(tensors), batches, origin, sessions):
        for tensor, cands in tensors.items():
            x = values[tensor]
            if tensor not in graphs:
                ranks = {i: r.weight[1].ndim for i, r in enumerate(r for r in readers[tensor] if r.weight is not None)}
                graphs[tensor] = _TensorGraph(graph, tensor, readers[tensor], cands, opset, x.ndim, ranks, sessions)
            graphs[tensor].add(x)
        if progress is not None:
            done += 1
            progress(done, len(batches))
    result = LocalResult({})
    for tensor, tg in graphs.items():
        best = int(np.argmin(tg.errors))
        result.qparams[tensor], result.chosen[tensor] = tg.candidates[best], best
        result.errors[tensor] = [float(e) for e in tg.errors]
        for reader, sums, weight_sums, count in zip(tg.weighted, tg.sums, tg.weight_sums, tg.counts):
            if count > 0:
                result.bias_delta[reader.node] = sums[best] / count
                result.weight_bias_delta[reader.node] = weight_sums / count
    return result


def _bias_slot_value(graph: onnx.GraphProto, name: str) -> Optional[np.ndarray]:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.float32)
    return None


def _matmul_bias_add(graph: onnx.GraphProto, index: int) -> Optional[Tuple[onnx.NodeProto, int]]:
    """The Add reading only this MatMul's output and a constant: (node, slot of the constant)."""
    out = graph.node[index].output[0]
    readers = [n for n in graph.node if out in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add" or any(o.name == out for o in graph.output):
        return None
    add = readers[0]
    slot = 1 if add.input[0] == out else 0
    return (add, slot) if _bias_slot_value(graph, add.input[slot]) is not None else None


def add_to_bias(graph: onnx.GraphProto, index: int, delta: np.ndarray, names) -> bool:
    """Fold a per-output-channel correction into the float bias feeding node `index` (a new initializer)."""
    node = graph.node[index]
    delta = np.asarray(delta, np.float32)
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        target, slot = node, 2
        if node.op_type == "Gemm":
            beta = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0)
            if beta == 0:
                return False
            delta = delta / np.float32(beta)
    elif node.op_type == "MatMul" and (found := _matmul_bias_add(graph, index)) is not None:
        target, slot = found
    else:
        return False
    has = slot < len(target.input) and bool(target.input[slot])
    old = _bias_slot_value(graph, target.input[slot]) if has else np.zeros_like(delta)
    if old is None or (old.ndim and old.shape[-1] not in (1, delta.size)):
        return False
    base = target.input[slot] if has else f"{node.input[1]}_bias"
    name = names.fresh(f"{base}_corrected")
    graph.initializer.append(numpy_helper.from_array((old + delta).astype(np.float32), name))
    while len(target.input) <= slot:
        target.input.append("")
    target.input[slot] = name
    return True
