"""ONNX graph facts the Horizon configs need: which node produces each tensor, and node-name lookup.

Horizon's node_info (hb_mapper) and node_config (J6 quant_config) address ONNX *node* names, while our
statistics are per *tensor*. A tensor maps to the node that produces it. Nodes without a name cannot be
addressed reliably (the converters name them internally), so they map to None: decisions about their
outputs are reported in ptq_summary.md, with the advice to name the node, but not written to the configs.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import onnx

from ..errors import OptionError

Producer = Tuple[Optional[str], Optional[str]]  # (node name or None, op_type); (None, None) = graph input


def producers(model: onnx.ModelProto) -> Dict[str, Producer]:
    """tensor name -> (producing node's name, or None when unnamed; its op_type)."""
    found: Dict[str, Producer] = {}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in found:
                found[out] = (node.name or None, node.op_type)
    return found


def node_names(model: onnx.ModelProto) -> List[str]:
    return [n.name for n in model.graph.node if n.name]


def resolve_nodes(requested: Iterable[str], model: onnx.ModelProto, option: str) -> List[str]:
    """Node names for user-given node or tensor names (a tensor means its producer), in the given order."""
    names = set(node_names(model))
    made_by = producers(model)
    resolved: List[str] = []
    for item in requested:
        if item in names:
            node = item
        elif item in made_by and made_by[item][0]:
            node = made_by[item][0]
        elif item in made_by:
            raise OptionError(f"{option} {item!r}: the node producing this tensor has no name; "
                              "Horizon's configs address nodes by name")
        else:
            sample = ", ".join(sorted(names)[:5])
            raise OptionError(f"{option} {item!r}: no node or tensor of that name in the model "
                              f"(nodes include: {sample or 'none named'})")
        if node not in resolved:
            resolved.append(node)
    return resolved
