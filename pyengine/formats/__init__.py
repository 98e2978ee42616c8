"""Scale-table formats: one module per format, plus detection for tools that read any of them.

- trt_cache: TensorRT's INT8 calibration cache (`TRT-<version>-<Calibrator>` then `name: hex`)
- scales_json: ptqengine's JSON with ranges, per-tensor statistics summary and provenance
- ort_json: onnxruntime's calibration.json (read only)
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

from ..errors import FormatError
from ._text import read_utf8
from .ort_json import looks_like_ort, ort_amax, read_ort_calibration_json
from .scales_json import FORMAT as SCALES_FORMAT
from .scales_json import parse_json, parse_scales_document, read_scales_json, write_scales_json
from .trt_cache import CALIBRATORS, TrtCache, parse_trt_cache, read_trt_cache, trt_version_code, write_trt_cache

KIND_TENSORRT = "tensorrt-cache"
KIND_SCALES_JSON = "ptqengine-json"
KIND_ORT_JSON = "onnxruntime-json"

__all__ = [
    "CALIBRATORS", "KIND_ORT_JSON", "KIND_SCALES_JSON", "KIND_TENSORRT", "TrtCache", "read_ort_calibration_json",
    "read_scale_table", "read_scales_json", "read_trt_cache", "trt_version_code", "write_scales_json",
    "write_trt_cache",
]


def read_scale_table(path: Union[str, Path]) -> Tuple[str, Dict[str, float]]:
    """(kind, amax per tensor in file order) for a TensorRT cache, our JSON or onnxruntime's JSON."""
    p = Path(path)
    text = read_utf8(p, "a scale table", "; onnxruntime's calibration.flatbuffers is not supported, use its "
                     "calibration.json", {b"PTQSTATS": "is a ptqengine statistics file, not a scale table "
                                                       "(derive one with 'ptqengine export')"})
    stripped = text.lstrip()
    if stripped.startswith("TRT-"):
        return KIND_TENSORRT, parse_trt_cache(text, str(p)).amax
    if stripped.startswith("{"):
        document = parse_json(text, str(p))
        if isinstance(document, dict) and document.get("format") == SCALES_FORMAT:
            return KIND_SCALES_JSON, parse_scales_document(document, str(p))
        if looks_like_ort(document):
            return KIND_ORT_JSON, ort_amax(document, str(p))
        raise FormatError(f"{p}: JSON, but neither a ptqengine scales file nor an onnxruntime calibration.json")
    first = stripped.splitlines()[0][:60] if stripped else ""
    if len(first.split()) == 2:
        raise FormatError(f"{p}:1: looks like onnxruntime's 'name value' calibration.cache, which is not "
                          f"TensorRT's format; read its calibration.json instead")
    raise FormatError(f"{p}:1: not a TensorRT calibration cache, ptqengine scales JSON or onnxruntime "
                      f"calibration.json (starts with {first!r})")
