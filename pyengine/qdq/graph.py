"""Graph preparation before quantisation: opset, Constant-held weights, BatchNormalization folding.

All three keep the names of the tensors that calibration saw, so the activation statistics collected
on the original model still apply to the prepared one:

- Opset: per-channel DequantizeLinear needs the `axis` attribute, added in opset 13, and onnxruntime
  refuses per-channel Q/DQ below 13. Models declaring an older default-domain opset are converted with
  `onnx.version_converter` (https://onnx.ai/onnx/api/version_converter.html); a failure is a ModelError.
- Constant nodes: exporters such as Paddle2ONNX (and torch for models inside `If` branches) keep weights
  in `Constant` nodes. They become initializers of the graph they live in, with the same name, so the
  rest of the code sees one kind of weight.
- BatchNormalization after Conv is folded into the Conv (W' = W * g / sqrt(var + eps) per output
  channel, B' = (B - mean) * g / sqrt(var + eps) + beta), as TensorRT's placement guide asks: do not
  simulate BN fusion with Q/DQ, fold it (TensorRT developer guide, explicit quantization, "Q/DQ
  Layer-Placement Recommendations":
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
  Per-channel weight ranges must be taken after folding (Nagel et al. 2019, "Data-Free Quantization",
  section 3.1: https://arxiv.org/abs/1906.04721). The folded Conv writes the BN's output tensor, whose
  calibration range is the one the next layer needs.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Dict, Iterator, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

log = logging.getLogger(__name__)

MIN_OPSET = 13  # first opset with per-axis QuantizeLinear / DequantizeLinear


# --- small helpers shared by the sub-package -----------------------------------------------------
def default_opset(model: onnx.ModelProto) -> int:
    """The default-domain ("" or "ai.onnx") opset the model declares (1 when absent, per the spec)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """Graphs held by a node's attributes (If branches, Loop / Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every graph nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def initializer_map(graph: onnx.GraphProto) -> Dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def consumer_count(graph: onnx.GraphProto) -> Counter:
    """How many node inputs (including those inside subgraphs, which may capture outer names) read each name."""
    counts: Counter = Counter()
    for g in all_graphs(graph):
        for node in g.node:
            counts.update(name for name in node.input if name)
    counts.update(out.name for out in graph.output)
    return counts


# --- opset --------------------------------------------------------------------------------------------
def ensure_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET, origin: str = "<model>") -> onnx.ModelProto:
    """The model itself when its opset is >= minimum, else a converted copy (ModelError if that fails)."""
    current = default_opset(model)
    if current >= minimum:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises RuntimeError / ConvertError / checker errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{origin}: opset {current} model could not be converted to opset {minimum} "
                         f"(needed for per-channel Q/DQ): {first}") from None
    log.info("%s: converted from opset %d to %d", origin, current, minimum)
    return converted


# --- Constant nodes -> initializers ---------------------------------------------------------------
def _constant_tensor(node: onnx.NodeProto) -> Optional[onnx.TensorProto]:
    """The tensor a Constant node produces, or None for forms we leave alone (sparse tensors)."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn Constant nodes (in every graph, subgraphs included) into initializers; returns how many."""
    return _constants_in(model.graph)


def _constants_in(graph: onnx.GraphProto) -> int:
    # Subgraphs first: rebuilding this graph's node list copies the nodes, subgraphs included, so they
    # must be final before that happens.
    moved = 0
    keep: List[onnx.NodeProto] = []
    for node in graph.node:
        for sub in subgraphs(node):
            moved += _constants_in(sub)
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            keep.append(node)
            continue
        init = onnx.TensorProto()
        init.CopyFrom(tensor)
        init.name = node.output[0]
        graph.initializer.append(init)
        moved += 1
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return moved


# --- BatchNormalization folding --------------------------------------------------------------------
def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _foldable(conv: onnx.NodeProto, bn: onnx.NodeProto, inits: Dict[str, onnx.TensorProto], uses: Counter,
              graph_outputs: set) -> bool:
    if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
        return False
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return False
    if uses[conv.output[0]] != 1 or conv.output[0] in graph_outputs:
        return False
    if _attr(bn, "training_mode", 0) or len([o for o in bn.output if o]) != 1:
        return False
    if not all(name in inits for name in bn.input[1:5]):
        return False
    return inits[conv.input[1]].data_type == TensorProto.FLOAT


def fresh_name(base: str, taken: set) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `taken` (which then holds it). Deterministic."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


class FreshNames:
    """Fresh, deterministic names that collide with nothing already in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set = {i.name for i in graph.initializer} | {i.name for i in graph.input}
        for node in graph.node:
            self.taken.update(o for o in node.output if o)
            self.taken.update(i for i in node.input if i)
            if node.name:
                self.taken.add(node.name)

    def fresh(self, base: str) -> str:
        return fresh_name(base, self.taken)


def fold_batchnorm(model: onnx.ModelProto) -> List[str]:
    """Fold every BatchNormalization that directly follows a Conv (main graph); returns the BN node names."""
    graph = model.graph
    inits = initializer_map(graph)
    uses = consumer_count(graph)
    graph_outputs = {o.name for o in graph.output}
    producer = {out: node for node in graph.node for out in node.output if out}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    folded_bn: List[onnx.NodeProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization":
            continue
        conv = producer.get(bn.input[0])
        if conv is None or not _foldable(conv, bn, inits, uses, graph_outputs):
            continue
        _fold_pair(graph, conv, bn, inits, uses, taken)
        folded_bn.append(bn)
    if folded_bn:
        drop = {id(n) for n in folded_bn}
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(graph)
    return [bn.name or bn.output[0] for bn in folded_bn]


def _fold_pair(graph: onnx.GraphProto, conv: onnx.NodeProto, bn: onnx.NodeProto,
               inits: Dict[str, onnx.TensorProto], uses: Counter, taken: set) -> None:
    # float64 arithmetic, one rounding to float32 at the end
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    eps = float(_attr(bn, "epsilon", 1e-5))
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
    factor = gamma / np.sqrt(var + eps)
    w_folded = (w * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    b_folded = ((b - mean) * factor + beta).astype(np.float32)

    w_name = _replace_or_add(graph, conv.input[1], w_folded, inits, uses, taken)
    b_base = conv.input[2] if has_bias else f"{conv.input[1]}_bias"
    b_name = _replace_or_add(graph, b_base, b_folded, inits, uses, taken) if has_bias else \
        _add_initializer(graph, fresh_name(b_base, taken), b_folded, inits)
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[1], conv.input[2] = w_name, b_name
    conv.output[0] = bn.output[0]


def _replace_or_add(graph: onnx.GraphProto, name: str, value: np.ndarray, inits: Dict[str, onnx.TensorProto],
                    uses: Counter, taken: set) -> str:
    """Overwrite an initializer read only by this Conv; a shared one gets a folded copy beside it."""
    if uses[name] == 1:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return name
    return _add_initializer(graph, fresh_name(f"{name}_bnfolded", taken), value, inits)


def _add_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray,
                     inits: Dict[str, onnx.TensorProto]) -> str:
    tensor = numpy_helper.from_array(value, name)
    graph.initializer.append(tensor)
    inits[name] = graph.initializer[-1]
    return name


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers nothing reads any more (and their graph-input entries, kept by IR < 4 models)."""
    used = consumer_count(graph)
    dropped = {init.name for init in graph.initializer if not used[init.name]}
    if not dropped:
        return
    keep = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    stale = [vi for vi in graph.input if vi.name in dropped]
    for vi in stale:
        graph.input.remove(vi)


def prepare(model: onnx.ModelProto, origin: str = "<model>", fold_bn: bool = True) -> onnx.ModelProto:
    """A copy ready for quantisation: opset >= 13, Constant weights as initializers, BN folded."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    prepared = ensure_opset(prepared, MIN_OPSET, origin)
    moved = constants_to_initializers(prepared)
    if moved:
        log.info("%s: %d Constant node(s) turned into initializers", origin, moved)
    if fold_bn:
        folded = fold_batchnorm(prepared)
        if folded:
            log.info("%s: folded %d BatchNormalization node(s) into Conv", origin, len(folded))
    return prepared


# --- constant folding of weight plumbing --------------------------------------------------------
# Exporters often reach a weight through shape-only ops (torch's LSTM export: weight -> Unsqueeze ->
# LSTM). Quantizers look for weights among initializers, so such chains over initializers are evaluated
# once here. Only these ops: they move or relabel values, never compute new ones, so folding them is
# exact and cheap.
FOLDABLE_OPS = ("Identity", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Cast", "Concat", "Slice",
                "Gather", "Split")


def fold_weight_plumbing(model: onnx.ModelProto) -> int:
    """Replace FOLDABLE_OPS nodes whose inputs are all initializers (this graph's or an enclosing one's)."""
    from onnx.reference import ReferenceEvaluator

    opset = default_opset(model)
    folded = 0

    def visit(graph: onnx.GraphProto, outer: Dict[str, onnx.TensorProto]) -> None:
        nonlocal folded
        known = dict(outer)
        known.update(initializer_map(graph))
        keep: List[onnx.NodeProto] = []
        for node in graph.node:
            inputs = [n for n in node.input if n]
            if (node.op_type in FOLDABLE_OPS and node.domain in ("", "ai.onnx") and inputs
                    and all(n in known for n in inputs)):
                values = _evaluate(ReferenceEvaluator, node, known, opset)
                if values is not None:
                    for name, value in zip(node.output, values):
                        tensor = numpy_helper.from_array(np.asarray(value), name)
                        graph.initializer.append(tensor)
                        known[name] = tensor
                    folded += 1
                    continue
            keep.append(node)
            for sub in subgraphs(node):
                visit(sub, known)
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)

    visit(model.graph, {})
    return folded


def _evaluate(evaluator_cls, node: onnx.NodeProto, known: Dict[str, onnx.TensorProto], opset: int):
    feeds = {n: numpy_helper.to_array(known[n]) for n in node.input if n}
    inputs = [helper.make_tensor_value_info(n, known[n].data_type, None) for n in feeds]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return evaluator_cls(model).run(None, feeds)
    except Exception as exc:  # leave the node in place; the quantizer then treats it as an activation
        log.debug("could not fold %s (%s): %s", node.name or node.output[0], node.op_type, exc)
        return None


# --- topological order --------------------------------------------------------------------------
def _outer_names(graph: onnx.GraphProto) -> set:
    """Names a subgraph reads from enclosing scopes (read but not defined inside it)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    read: set = set()
    for node in graph.node:
        defined.update(o for o in node.output if o)
    for node in graph.node:
        read.update(i for i in node.input if i)
        for sub in subgraphs(node):
            read |= _outer_names(sub)
    read.update(o.name for o in graph.output)
    return read - defined


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node follows the producers of its inputs (subgraph captures included).

    Stable: among ready nodes the one earliest in the current order goes first, so a sorted graph is
    left as it is. Subgraphs are sorted too.
    """
    import heapq

    for node in graph.node:
        for sub in subgraphs(node):
            topological_sort(sub)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps: List[set] = []
    for node in graph.node:
        needed = {i for i in node.input if i}
        for sub in subgraphs(node):
            needed |= _outer_names(sub)
        deps.append({producer[n] for n in needed if n in producer})
    waiting = [len(d) for d in deps]
    users: Dict[int, List[int]] = {}
    for i, d in enumerate(deps):
        for p in d:
            users.setdefault(p, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise ModelError(f"graph {graph.name!r} has a cycle; it cannot be ordered")
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)
