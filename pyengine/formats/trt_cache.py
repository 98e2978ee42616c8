"""TensorRT INT8 calibration cache (implicit quantization, TensorRT 5 to 10).

Layout, one line each, '\\n' endings, trailing newline:

    TRT-<version code>-<calibrator class>
    <tensor name>: <8 hex digits>

The hex digits are the big-endian IEEE-754 float32 bits of scale = amax / 127 (`3c010204` is 1/127,
amax 1.0). The version code is M*1000 + m*100 + p up to TensorRT 8 (8.6.1 -> 8601) and
M*10000 + m*100 + p from TensorRT 10 (10.3.0 -> 100300). TensorRT ignores a cache whose header does
not match its own version and the calibrator class the application uses, and silently recalibrates,
so the header follows the user's deployment, not the algorithm that computed the scales.

Values TensorRT cannot use are written as follows (and reported in the returned warnings):
- amax == 0 or NaN (a tensor that is always zero, or saw no finite value): the smallest positive
  normal float32 scale (2**-126, `00800000`); any scale represents an all-zero tensor exactly, and a
  normal number keeps 1/scale finite in float32.
- amax == +inf or a scale above the float32 range: the largest finite float32 scale.
- amax below the smallest normal scale: rounded up to it.
Negative amax is rejected. Names with ':' are written but reported, because onnxruntime's TensorRT EP
splits lines on ':'. Names with a line break cannot be written at all.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

from ..atomic import write_text_atomic
from ..errors import FormatError, OptionError, PtqError
from ._text import read_utf8

CALIBRATORS: Dict[str, str] = {"entropy2": "EntropyCalibration2", "minmax": "MinMaxCalibration"}
DEFAULT_VERSION = "10.3.0"
DEFAULT_CALIBRATOR = "entropy2"

SMALLEST_SCALE = 2.0 ** -126  # smallest positive normal float32
LARGEST_SCALE = struct.unpack("!f", bytes.fromhex("7f7fffff"))[0]  # largest finite float32
_HEADER = re.compile(r"TRT-(\d+)-([A-Za-z0-9_]+)")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")


def trt_version_code(version: str) -> int:
    """'8.6.1' -> 8601, '10.3' / '10.3.0' -> 100300; TensorRT 9 and 11+ are rejected (OptionError)."""
    text = str(version).strip()
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise OptionError(f"--trt-version: expected a TensorRT version like 10.3.0 or 8.6.1, got {version!r}")
    major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])  # a 4th part (build) is not encoded
    if major == 9:
        raise OptionError("--trt-version: TensorRT 9 was never released publicly; give the 8.x or 10.x that "
                          "reads the cache")
    if major >= 11:
        raise OptionError(f"--trt-version: TensorRT {major} removed implicit INT8 calibration caches; "
                          "write a Q/DQ ONNX model for it instead (calibrate --qdq MODEL.int8.onnx, or "
                          "ptqengine quantize)")
    if major < 5:
        raise OptionError(f"--trt-version: TensorRT {major} is too old (calibration caches start at 5.x)")
    if major <= 8:
        if minor > 9 or patch > 99:
            raise OptionError(f"--trt-version: {version!r} does not fit TensorRT {major}'s version code")
        return major * 1000 + minor * 100 + patch
    if minor > 99 or patch > 99:
        raise OptionError(f"--trt-version: {version!r} does not fit TensorRT 10's version code")
    return major * 10000 + minor * 100 + patch


def trt_version_string(code: int) -> str:
    """Inverse of trt_version_code for display: 100300 -> '10.3.0', 8601 -> '8.6.1'."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def calibrator_class(calibrator: str) -> str:
    """'entropy2' / 'minmax' (or the class names themselves) -> the header's class name."""
    key = str(calibrator).strip()
    if key.lower() in CALIBRATORS:
        return CALIBRATORS[key.lower()]
    if key in CALIBRATORS.values():
        return key
    raise OptionError(f"--trt-calibrator: unknown calibrator {calibrator!r}; valid: {', '.join(CALIBRATORS)}")


def scale_hex(scale: float) -> str:
    """Big-endian float32 bits of a scale, always 8 lowercase hex digits."""
    return struct.pack("!f", scale).hex()


def hex_scale(digits: str) -> float:
    """Inverse of scale_hex; accepts unpadded digits as some writers drop leading zeros."""
    return struct.unpack("!f", int(digits, 16).to_bytes(4, "big"))[0]


# Why a scale was not amax / 127, and what was written instead (one warning per reason).
NO_RANGE = ("amax 0 or NaN (no finite non-zero values seen)", "wrote the smallest positive scale")
ABOVE_FLOAT32 = ("a scale above float32's range", "wrote the largest float32 scale")
BELOW_NORMAL = ("a scale below float32's normal range", "rounded up to the smallest normal one")
NAMES_SHOWN = 5  # an all-NaN input gives every tensor the same warning: one line names a few


def cache_scale(name: str, amax: float) -> Tuple[float, Tuple[str, str]]:
    """The scale to write for one tensor and the reason it is not amax / 127 (() when it is)."""
    value = float(amax)
    if value < 0:
        raise PtqError(f"tensor {name!r}: negative amax {value!r} cannot be a calibration range")
    if value == 0 or math.isnan(value):
        return SMALLEST_SCALE, NO_RANGE
    scale = value / 127.0
    if scale > LARGEST_SCALE:
        return LARGEST_SCALE, ABOVE_FLOAT32
    if scale < SMALLEST_SCALE:
        return SMALLEST_SCALE, BELOW_NORMAL
    return scale, ()


def _named(names: List[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def format_trt_cache(amax: Mapping[str, float], version: str = DEFAULT_VERSION,
                     calibrator: str = DEFAULT_CALIBRATOR) -> Tuple[str, List[str]]:
    """The cache text (tensors in the mapping's order) and warnings, without touching the disk."""
    lines = [f"TRT-{trt_version_code(version)}-{calibrator_class(calibrator)}"]
    adjusted: Dict[Tuple[str, str], List[str]] = {}
    colon_names: List[str] = []
    for name, value in amax.items():
        if not name or "\n" in name or "\r" in name:
            raise PtqError(f"tensor {name!r}: an empty name or a line break cannot be written to a TensorRT cache")
        if ":" in name:
            colon_names.append(name)
        scale, reason = cache_scale(name, value)
        if reason:
            adjusted.setdefault(reason, []).append(name)
        lines.append(f"{name}: {scale_hex(scale)}")
    warnings = [f"{len(names)} tensor(s) with {why} ({_named(names)}): {what}"
                for (why, what), names in adjusted.items()]
    if colon_names:
        warnings.append(f"{len(colon_names)} tensor name(s) contain ':' which onnxruntime's TensorRT EP cannot "
                        f"parse: {_named(colon_names)}")
    return "\n".join(lines) + "\n", warnings


def write_trt_cache(path: Union[str, Path], amax: Mapping[str, float], version: str = DEFAULT_VERSION,
                    calibrator: str = DEFAULT_CALIBRATOR) -> List[str]:
    """Write the cache atomically; returns warnings (one line each) for the caller to show."""
    text, warnings = format_trt_cache(amax, version, calibrator)
    write_text_atomic(path, text)
    return warnings


@dataclass
class TrtCache:
    """A parsed cache: version code, calibrator class name, amax (= scale * 127) per tensor in file order."""

    version_code: int
    algorithm: str
    amax: Dict[str, float] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return trt_version_string(self.version_code)

    @property
    def scales(self) -> Dict[str, float]:
        return {name: value / 127.0 for name, value in self.amax.items()}


def parse_trt_cache(text: str, source: str = "<text>") -> TrtCache:
    """Parse TensorRT's own caches and ours. Names may contain ': ', so lines split on the LAST ': '."""
    lines = text.splitlines()
    header = _HEADER.fullmatch(lines[0].strip()) if lines else None
    if header is None:
        first = lines[0][:60] if lines else ""
        raise FormatError(f"{source}:1: not a TensorRT calibration cache (expected 'TRT-<version>-<Calibrator>', "
                          f"got {first!r})")
    cache = TrtCache(int(header.group(1)), header.group(2))
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rpartition(":")
        digits = digits.strip()
        if not sep or not name or not _HEX.fullmatch(digits):
            raise FormatError(f"{source}:{number}: expected '<tensor name>: <hex scale>', got {line[:80]!r}")
        if name in cache.amax:
            raise FormatError(f"{source}:{number}: tensor {name!r} appears twice")
        scale = hex_scale(digits)
        if not (math.isfinite(scale) and scale > 0):
            # A scale that is not a positive finite number quantises nothing; refusing it here keeps
            # `evaluate` from blaming the model for a bad cache.
            raise FormatError(f"{source}:{number}: tensor {name!r}: scale {scale!r} ({digits}) is not a positive "
                              f"finite number")
        cache.amax[name] = scale * 127.0
    return cache


def read_trt_cache(path: Union[str, Path]) -> TrtCache:
    return parse_trt_cache(read_utf8(path, "a TensorRT calibration cache"), str(path))
