"""FP16 fallback: named nodes run in float16 instead of int8, written into the graph's types.

TensorRT's explicit quantization is meant to run with strong typing, where the ONNX types decide each
layer's precision and build flags do not ("Use explicit quantization with Strong Typing", TensorRT
developer guide: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
So a layer kept out of int8 but wanted in FP16 must be FP16 in the model: its float inputs are cast to
float16 (initializers converted once, activations through a Cast node), and its float outputs are
computed as float16 and cast back to float32 under their original names, so the rest of the graph is
unchanged. Inputs whose operator schema fixes them to float32 (e.g. Resize `scales`) are left alone.
onnxruntime's CPU provider runs such a graph too: where it has no float16 kernel it inserts the casts
back to float32 itself.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import fresh_name, default_opset


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:  # custom / unknown op: no schema, convert everything float
        return None


def _fixed_float32(schema, slot: int, outputs: bool = False) -> bool:
    """True when the schema pins this input (or output) to tensor(float), so it must stay float32."""
    if schema is None:
        return False
    formals = schema.outputs if outputs else schema.inputs
    if not formals:
        return False
    formal = formals[min(slot, len(formals) - 1)]  # variadic: the last formal repeats
    return formal.type_str == "tensor(float)"


def apply_fp16_fallback(model: onnx.ModelProto, node_indices: Sequence[int],
                        float_types: Mapping[str, np.dtype]) -> List[str]:
    """Rewrite the given main-graph nodes to float16 in place; returns the names of the nodes changed.

    float_types: every float activation of the graph -> its dtype (from ptqengine.model.find_activations).
    """
    graph = model.graph
    opset = default_opset(model)
    inits = {i.name: i for i in graph.initializer}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        return fresh_name(base, taken)

    half_inits: Dict[str, str] = {}
    half_acts: Dict[str, str] = {}
    before: Dict[int, List[onnx.NodeProto]] = {}
    after: Dict[int, List[onnx.NodeProto]] = {}
    changed: List[str] = []
    for index in sorted(node_indices):
        node = graph.node[index]
        schema = _schema(node, opset)
        touched = False
        for slot, name in enumerate(node.input):
            if not name or _fixed_float32(schema, slot):
                continue
            init = inits.get(name)
            if init is not None and init.data_type == TensorProto.FLOAT:
                if name not in half_inits:
                    half_inits[name] = fresh(f"{name}_fp16")
                    graph.initializer.append(numpy_helper.from_array(
                        numpy_helper.to_array(init).astype(np.float16), half_inits[name]))
                node.input[slot] = half_inits[name]
                touched = True
            elif init is None and float_types.get(name) == np.float32:
                if name not in half_acts:
                    half_acts[name] = fresh(f"{name}_fp16")
                    before.setdefault(index, []).append(helper.make_node(
                        "Cast", [name], [half_acts[name]], name=fresh(f"{name}_to_fp16"), to=TensorProto.FLOAT16))
                node.input[slot] = half_acts[name]
                touched = True
        for slot, name in enumerate(node.output):
            if not name or float_types.get(name) != np.float32 or _fixed_float32(schema, slot, outputs=True):
                continue
            half = fresh(f"{name}_fp16")
            node.output[slot] = half
            after.setdefault(index, []).append(helper.make_node(
                "Cast", [half], [name], name=fresh(f"{name}_to_fp32"), to=TensorProto.FLOAT))
            touched = True
        if touched:
            changed.append(node.name or node.output[0])
    ordered: List[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        ordered.extend(before.get(index, ()))
        ordered.append(node)
        ordered.extend(after.get(index, ()))
    del graph.node[:]
    graph.node.extend(ordered)
    return changed
