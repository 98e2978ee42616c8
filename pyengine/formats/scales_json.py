"""ptqengine's scales JSON: the calibrated ranges with enough provenance to reproduce them.

Schema (version 1). Keys are sorted, indent 2, '\\n' line endings, trailing newline, so equal results
give identical bytes. Non-finite numbers are written as null (JSON has no NaN / Infinity).

    {
      "format": "ptqengine-scales",        # constant, identifies the file
      "version": 1,                         # schema version; readers reject other values
      "tool_version": "0.1.0",              # ptqengine version that wrote the statistics
      "model": {"file": str|null, "sha256": str|null},
      "data": {"manifest_sha256": str|null, # hash of the calibration sample list
               "samples": int|null},        # samples the statistics were collected from
      "algorithm": {"name": "entropy",      # max | percentile | entropy | mse | ...
                    "options": {...}},      # the resolved options, defaults included
      "tensors": [                          # graph order (network inputs first)
        {"name": str,
         "amax": float|null,                # symmetric range [-amax, amax]
         "scale": float|null,               # amax / 127 (float64; a TensorRT cache rounds it to float32)
         "min": float|null, "max": float|null,   # observed finite extremes
         "count": int,                      # values seen, non-finite included
         "nan_count": int, "inf_count": int}
      ],
      "convergence": {...}                  # only for runs that measured it (calibrate --convergence):
    }                                       # ptqengine.formats.convergence.json_view (summary, per-checkpoint
                                            # distribution, curves of the least settled tensors, per tensor
                                            # split-half disagreement and since when it is settled)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

from .._version import __version__
from ..algorithms import symmetric_scale
from ..atomic import write_text_atomic
from ..errors import FormatError
from ._text import read_utf8
from .convergence import RECORD_KEY, json_view

if TYPE_CHECKING:  # pragma: no cover
    from ..result import CalibrationResult
    from ..stats import TensorStats

FORMAT = "ptqengine-scales"
VERSION = 1


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for NaN / infinity / missing."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """Option values as JSON-native types (numpy scalars and tuples come from the pipeline)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value


def tensor_entry(name: str, amax: float, stats: Optional["TensorStats"]) -> Dict[str, Any]:
    finite_amax = _number(amax)
    entry: Dict[str, Any] = {
        "name": name,
        "amax": finite_amax,
        "scale": None if finite_amax is None else symmetric_scale(finite_amax),
        "min": None, "max": None, "count": 0, "nan_count": 0, "inf_count": 0,
    }
    if stats is not None:
        entry.update(min=_number(stats.min), max=_number(stats.max), count=int(stats.count),
                     nan_count=int(stats.nan_count), inf_count=int(stats.inf_count))
    return entry


def scales_document(amax: Mapping[str, float], tensors: Mapping[str, "TensorStats"], metadata: Mapping[str, Any],
                    algo: str, algo_options: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON document as a dict; tensors follow `amax`'s order (graph order)."""
    # Nested {"model": {...}, "data": {...}} or the flat keys the pipeline writes (model_file, ...).
    # (free-form metadata: a "model" or "data" entry that is not an object is not ours)
    model = metadata.get("model") if isinstance(metadata.get("model"), dict) else \
        {"file": metadata.get("model_file"), "sha256": metadata.get("model_sha256")}
    data = metadata.get("data") if isinstance(metadata.get("data"), dict) else \
        {"manifest_sha256": metadata.get("manifest_sha256"), "samples": metadata.get("samples")}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "tool_version": metadata.get("tool_version") or __version__,
        "model": {"file": model.get("file"), "sha256": model.get("sha256")},
        "data": {"manifest_sha256": data.get("manifest_sha256"), "samples": data.get("samples")},
        "algorithm": {"name": algo, "options": _plain(dict(algo_options))},
        "tensors": [tensor_entry(name, value, tensors.get(name)) for name, value in amax.items()],
    }
    if metadata.get(RECORD_KEY) is not None:
        document[RECORD_KEY] = json_view(metadata[RECORD_KEY])
    return document


def dumps_scales(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_scales_json(path: Union[str, Path], result: "CalibrationResult") -> None:
    """Write a CalibrationResult's ranges and provenance atomically."""
    document = scales_document(result.amax, result.stats.tensors, result.stats.metadata,
                               result.algo, result.algo_options)
    write_text_atomic(path, dumps_scales(document))


def parse_scales_document(document: Any, source: str = "<json>") -> Dict[str, float]:
    """amax per tensor (NaN where the file has null) from a loaded document."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FormatError(f"{source}: not a ptqengine scales file (no \"format\": \"{FORMAT}\")")
    if document.get("version") != VERSION:
        raise FormatError(f"{source}: scales file version {document.get('version')!r} is not supported "
                          f"(this ptqengine reads version {VERSION})")
    tensors = document.get("tensors")
    if not isinstance(tensors, list):
        raise FormatError(f"{source}: \"tensors\" must be a list")
    amax: Dict[str, float] = {}
    for index, entry in enumerate(tensors):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise FormatError(f"{source}: tensors[{index}] has no \"name\"")
        value = entry.get("amax")
        if value is not None and not isinstance(value, (int, float)):
            raise FormatError(f"{source}: tensor {entry['name']!r}: amax {value!r} is not a number")
        if value is not None and math.isinf(value):  # a number too long to be a range (see _json_int)
            raise FormatError(f"{source}: tensor {entry['name']!r}: amax must be finite")
        amax[entry["name"]] = math.nan if value is None else float(value)
    return amax


def _json_int(text: str) -> Any:
    # Integers longer than any range or count we read become floats (inf when huge): int() of more than
    # 4300 digits raises, and float() of a 400-digit int overflows later, in whoever reads it.
    return int(text) if len(text) <= 19 else float(text)


def parse_json(text: str, origin: str) -> Any:
    """json.loads of another tool's file: one-line FormatErrors for syntax errors, nesting deep enough to
    exhaust the parser's recursion, and numbers too long to be one."""
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{origin}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise FormatError(f"{origin}: JSON nested too deep to be a scale table") from None
    except ValueError as exc:
        raise FormatError(f"{origin}: not valid JSON ({str(exc).splitlines()[0][:100]})") from None


def load_json(path: Union[str, Path]) -> Any:
    """json.load with one-line PtqErrors for missing files, syntax errors and hostile documents."""
    p = Path(path)
    return parse_json(read_utf8(p, "a JSON file"), str(p))


def read_scales_json(path: Union[str, Path]) -> Dict[str, float]:
    return parse_scales_document(load_json(path), str(path))
