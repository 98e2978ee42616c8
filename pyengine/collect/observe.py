"""Which tensors a statistics run observes, and the model that exposes them to onnxruntime.

Every float activation (ptqengine.model: graph inputs, then node outputs in graph order) gets statistics.
Graph inputs come from the feeds. Outputs of value-preserving ops (Identity, Reshape, Transpose, ...) hold
exactly their input's values, rearranged; the statistics are order-independent, so they are copies of their
input's and are neither exposed nor folded in (transformers are full of Reshape / Transpose). The rest are
added as graph outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping

import numpy as np
import onnx
from onnx import helper

from ..model import ModelInfo

VALUE_PRESERVING_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def value_preserving_copies(model: onnx.ModelProto, dtypes: Mapping[str, np.dtype]) -> Dict[str, str]:
    """activation -> the activation whose statistics it shares (through chains of value-preserving ops)."""
    copies: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in VALUE_PRESERVING_OPS and node.domain in ("", "ai.onnx") and node.input and node.output:
            src, out = node.input[0], node.output[0]
            if out in dtypes and src in dtypes and dtypes[src] == dtypes[out]:
                copies[out] = copies.get(src, src)
    return copies


@dataclass
class Observation:
    """The activations of a model (graph order) and how each is obtained."""

    activations: List[str]
    inputs: List[str]  # graph inputs among them: taken from the feeds
    exposed: List[str]  # node outputs onnxruntime must return
    copies: Dict[str, str] = field(default_factory=dict)  # activation -> the one whose statistics it shares
    dtypes: Dict[str, np.dtype] = field(default_factory=dict, repr=False)

    @property
    def observed(self) -> List[str]:
        """The tensors whose values a batch delivers, in the order a statistics update takes them."""
        return self.inputs + self.exposed


def plan_observation(model: onnx.ModelProto, info: ModelInfo) -> Observation:
    input_names = {s.name for s in info.inputs}
    copies = value_preserving_copies(model, info.activation_dtypes)
    inputs = [n for n in info.activations if n in input_names]
    exposed = [n for n in info.activations if n not in input_names and n not in copies]
    return Observation(list(info.activations), inputs, exposed, copies, dict(info.activation_dtypes))


def expose(model: onnx.ModelProto, observation: Observation) -> bytes:
    """The model with the observed node outputs added as graph outputs, serialised (proto modified in place)."""
    existing = {o.name for o in model.graph.output}
    for name in observation.exposed:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(observation.dtypes[name]), None))
    return model.SerializeToString()
