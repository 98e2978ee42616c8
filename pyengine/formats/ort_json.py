"""onnxruntime's calibration.json, as written by `onnxruntime.quantization.quant_utils.write_calibration_table`.

Two shapes exist, depending on the onnxruntime version:
- older releases dump a plain mapping: {"tensor": [lowest, highest], ...};
- newer ones dump a TensorsData object: {"CLS": "TensorsData", "calibration_method": {...},
  "data": {"tensor": {"CLS": "TensorData", "lowest": L, "highest": H, ...}}}, where L and H are
  numbers or encoded arrays {"CLS": "numpy.array", "data": [...], "dtype": "float32"}.
A mapping of name -> TensorData dicts without the wrapper is accepted too.
amax = max(|lowest|, |highest|) over all elements. (onnxruntime's own flatbuffers table writes
max(highest, lowest) instead, which is wrong for tensors that are only negative.)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, Union

from ..errors import FormatError
from .scales_json import load_json


def _flatten(value: Any) -> Iterable[float]:
    """Every number in a (nested) list or encoded array; a work list, not recursion (other people's files
    nest as deep as they like). TypeError for anything else, ValueError for an infinite number."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict) and item.get("CLS") == "numpy.array":
            item = item.get("data")
        if isinstance(item, bool) or item is None:
            raise TypeError
        if isinstance(item, (int, float)):
            number = float(item)
            if math.isinf(number):
                raise ValueError
            yield number
        elif isinstance(item, list) and item:
            stack.extend(reversed(item))
        else:
            raise TypeError


def _range(name: str, value: Any, source: str) -> tuple:
    if isinstance(value, dict):
        if "lowest" not in value or "highest" not in value:
            raise FormatError(f"{source}: tensor {name!r} has no lowest/highest range")
        parts = (value["lowest"], value["highest"])
    elif isinstance(value, list) and len(value) == 2:
        parts = tuple(value)
    else:
        raise FormatError(f"{source}: tensor {name!r}: expected [lowest, highest] or a TensorData object")
    try:
        return tuple(list(_flatten(p)) for p in parts)
    except TypeError:
        raise FormatError(f"{source}: tensor {name!r}: lowest/highest are not numbers") from None
    except (ValueError, OverflowError):
        raise FormatError(f"{source}: tensor {name!r}: lowest/highest must be finite") from None


def ort_amax(document: Any, source: str = "<json>") -> Dict[str, float]:
    """amax per tensor, in file order, from a loaded calibration.json document."""
    if not isinstance(document, dict):
        raise FormatError(f"{source}: not an onnxruntime calibration.json (top level is not an object)")
    table = document.get("data") if document.get("CLS") == "TensorsData" else document
    if not isinstance(table, dict) or not table:
        raise FormatError(f"{source}: onnxruntime calibration.json holds no tensors")
    amax: Dict[str, float] = {}
    for name, value in table.items():
        lows, highs = _range(name, value, source)
        values = [abs(v) for v in lows + highs if not math.isnan(v)]
        amax[name] = max(values) if values else math.nan
    return amax


def looks_like_ort(document: Any) -> bool:
    """Cheap shape test used by format detection (no validation of every entry)."""
    if not isinstance(document, dict) or not document:
        return False
    if document.get("CLS") == "TensorsData":
        return True
    first = next(iter(document.values()))
    return (isinstance(first, list) and len(first) == 2) or (isinstance(first, dict) and "highest" in first)


def read_ort_calibration_json(path: Union[str, Path]) -> Dict[str, float]:
    return ort_amax(load_json(path), str(path))
