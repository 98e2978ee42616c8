"""Graph surgery: turn a QdqPlan into QuantizeLinear / DequantizeLinear nodes and int8 initializers.

Conventions the consumers need (TensorRT's ONNX parser and onnxruntime, see placement.py for sources):
int8 zero points that are all zero and always given as the third input (TensorRT 8.0-8.5 parsers
require it); `axis` written explicitly on every per-channel DequantizeLinear (its default is 1, not 0);
activation scales as float32 scalars. Each Q/DQ node is inserted right before the first node that reads
its output, so node order stays topological, and names derive from the tensor names (deterministic).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import FreshNames, consumer_count
from .placement import QdqPlan
from .weights import QParams, QuantizedWeight, quantize_weight, symmetric_qparams


def _activation_pair(tensor: str, qparams: QParams, names: FreshNames
                     ) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto], str]:
    scale_name, zp_name = names.fresh(f"{tensor}_scale"), names.fresh(f"{tensor}_zero_point")
    quantized, dequantized = names.fresh(f"{tensor}_quantized"), names.fresh(f"{tensor}_dequantized")
    inits = [numpy_helper.from_array(np.array(qparams.scale, dtype=np.float32), scale_name),
             numpy_helper.from_array(qparams.zero_point_array(), zp_name)]
    nodes = [helper.make_node("QuantizeLinear", [tensor, scale_name, zp_name], [quantized],
                              name=names.fresh(f"{tensor}_QuantizeLinear")),
             helper.make_node("DequantizeLinear", [quantized, scale_name, zp_name], [dequantized],
                              name=names.fresh(f"{tensor}_DequantizeLinear"))]
    return nodes, inits, dequantized


def _weight_dq(name: str, q: QuantizedWeight, names: FreshNames
               ) -> Tuple[onnx.NodeProto, List[onnx.TensorProto], str]:
    q_name, scale_name = names.fresh(f"{name}_quantized"), names.fresh(f"{name}_scale")
    zp_name, out_name = names.fresh(f"{name}_zero_point"), names.fresh(f"{name}_dequantized")
    inits = [numpy_helper.from_array(q.values, q_name),
             numpy_helper.from_array(q.scale.astype(np.float32), scale_name),
             numpy_helper.from_array(np.zeros(q.scale.shape, dtype=np.int8), zp_name)]
    attrs = {} if q.axis is None else {"axis": int(q.axis)}
    node = helper.make_node("DequantizeLinear", [q_name, scale_name, zp_name], [out_name],
                            name=names.fresh(f"{name}_DequantizeLinear"), **attrs)
    return node, inits, out_name


def insert_qdq(model: onnx.ModelProto, plan: QdqPlan, amax: Mapping[str, float], *,
               qparams: Optional[Mapping[str, QParams]] = None,
               weights: Optional[Mapping[Tuple[str, Optional[int]], QuantizedWeight]] = None) -> Dict[str, int]:
    """Apply the plan to model.graph in place; returns counts of what was added.

    Activations: `qparams[tensor]` when given, else symmetric int8 from `amax[tensor]`. Weights:
    `weights[(initializer, axis)]` when given, else max|w| per channel (weights.quantize_weight).
    """
    graph = model.graph
    names = FreshNames(graph)
    inits = {i.name: i for i in graph.initializer}
    before: Dict[int, List[onnx.NodeProto]] = {}  # node index -> Q/DQ nodes to put in front of it
    new_inits: List[onnx.TensorProto] = []

    act_out: Dict[str, str] = {}
    for edge in plan.activations:
        if edge.tensor not in act_out:
            params = (qparams or {}).get(edge.tensor) or symmetric_qparams(float(amax[edge.tensor]))
            nodes, tensors, out = _activation_pair(edge.tensor, params, names)
            before.setdefault(edge.node, []).extend(nodes)
            new_inits.extend(tensors)
            act_out[edge.tensor] = out
        graph.node[edge.node].input[edge.input] = act_out[edge.tensor]

    w_out: Dict[Tuple[str, Optional[int]], str] = {}
    for edge in plan.weights:
        key = (edge.initializer, edge.axis)
        if key not in w_out:
            q = (weights or {}).get(key) or quantize_weight(numpy_helper.to_array(inits[edge.initializer]), edge.axis)
            node, tensors, out = _weight_dq(edge.initializer, q, names)
            before.setdefault(edge.node, []).append(node)
            new_inits.extend(tensors)
            w_out[key] = out
        graph.node[edge.node].input[edge.input] = w_out[key]

    ordered: List[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        ordered.extend(before.get(index, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    _drop_replaced_weights(graph, {w for w, _ in w_out})
    return {"activation_qdq": len(act_out), "weight_dq": len(w_out)}


def _drop_replaced_weights(graph: onnx.GraphProto, weights: Set[str]) -> None:
    """Float weights no node reads any more (all consumers now read the int8 copy) are removed."""
    uses = consumer_count(graph)
    unused = {w for w in weights if not uses[w]}
    if not unused:
        return
    keep = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for vi in [vi for vi in graph.input if vi.name in unused]:
        graph.input.remove(vi)
