"""The statistics file (.ptqs): every tensor's TensorStats plus metadata, in one file.

Layout: b"PTQSTATS" | u32 version (1) | u32 header length | header JSON (UTF-8, sorted keys) |
the tensors' TensorStats bytes back to back, in the order the header lists them. The header holds
{"metadata": {...}, "tensors": [{"name": str, "nbytes": int}, ...]}. Equal statistics and metadata
give identical files; `export`, Q/DQ, Horizon and analysis features read everything from here.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .atomic import write_bytes_atomic
from .errors import FormatError, PtqError
from .stats import TensorStats

MAGIC = b"PTQSTATS"
VERSION = 1


CONSTANTS_KEY = "constant_amax"


@dataclass
class StatsBundle:
    """Named statistics (insertion order = graph order) and free-form metadata."""

    tensors: Dict[str, TensorStats]
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def constants(self) -> Dict[str, float]:
        """The model's constant float tensors a TensorRT cache lists, name -> max|value| (metadata
        CONSTANTS_KEY, written by the collection from the model; checked by from_bytes)."""
        return {name: float(value) for name, value in self.metadata.get(CONSTANTS_KEY, [])}

    def to_bytes(self) -> bytes:
        blobs = [(name, s.to_bytes()) for name, s in self.tensors.items()]
        header = {"metadata": self.metadata,
                  "tensors": [{"name": n, "nbytes": len(b)} for n, b in blobs]}
        head = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return MAGIC + struct.pack("<II", VERSION, len(head)) + head + b"".join(b for _, b in blobs)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "StatsBundle":
        """Parse a statistics file; anything malformed raises FormatError naming `source`."""
        entries, metadata, pos = _read_header(data, source)
        tensors: Dict[str, TensorStats] = {}
        for name, nbytes in entries:
            blob = data[pos:pos + nbytes]
            if len(blob) != nbytes:
                raise FormatError(f"{source}: statistics file is truncated at tensor {name!r}")
            try:
                tensors[name] = TensorStats.from_bytes(blob)
            except ValueError as exc:
                raise FormatError(f"{source}: tensor {name!r}: {exc}") from None
            pos += nbytes
        if pos != len(data):
            raise FormatError(f"{source}: statistics file has trailing bytes")
        _check_constants(metadata.get(CONSTANTS_KEY, []), source)
        return cls(tensors, metadata)


def _check_constants(found: Any, source: str) -> None:
    """[name, amax] pairs (a list, so that graph order survives sorted JSON keys), each amax finite and > 0."""
    if not isinstance(found, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)
            and 0 < pair[1] < float("inf") for pair in found):
        raise FormatError(f"{source}: metadata '{CONSTANTS_KEY}' must be [tensor name, positive finite amax] pairs")


def _read_header(data: bytes, source: str) -> Tuple[List[Tuple[str, int]], Dict[str, Any], int]:
    """The header's (name, nbytes) entries and metadata, checked; and where the tensors start."""
    start = len(MAGIC) + 8
    if not data.startswith(MAGIC) or len(data) < start:
        raise FormatError(f"{source}: not a ptqengine statistics file")
    version, head_len = struct.unpack_from("<II", data, len(MAGIC))
    if version != VERSION:
        raise FormatError(f"{source}: statistics file version {version} is not supported")
    if start + head_len > len(data):
        raise FormatError(f"{source}: statistics file is truncated in its header")
    try:
        header = json.loads(data[start:start + head_len].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSON and int-size errors
        raise FormatError(f"{source}: statistics file header is corrupt") from None
    if not isinstance(header, dict) or set(header) != {"metadata", "tensors"}:
        raise FormatError(f"{source}: statistics file header must be an object with exactly "
                          "'metadata' and 'tensors'")
    metadata, listed = header["metadata"], header["tensors"]
    if not isinstance(metadata, dict):
        raise FormatError(f"{source}: statistics file metadata must be an object")
    if not isinstance(listed, list):
        raise FormatError(f"{source}: statistics file 'tensors' must be a list")
    check_metadata(metadata, source)
    entries: List[Tuple[str, int]] = []
    seen = set()
    for k, entry in enumerate(listed):
        if not (isinstance(entry, dict) and set(entry) == {"name", "nbytes"}
                and isinstance(entry["name"], str) and type(entry["nbytes"]) is int
                and entry["nbytes"] >= 0):
            raise FormatError(f"{source}: statistics file tensor entry {k} must be "
                              '{"name": <string>, "nbytes": <integer >= 0>}')
        if entry["name"] in seen:
            raise FormatError(f"{source}: statistics file lists tensor {entry['name']!r} twice")
        seen.add(entry["name"])
        entries.append((entry["name"], entry["nbytes"]))
    return entries, metadata, start + head_len


# --- metadata: free-form, but the keys our commands read must have the types they read ---------------
_MAX_INT = (1 << 63) - 1


def _is_int(v: Any, least: int = 0) -> bool:
    return type(v) is int and least <= v <= _MAX_INT


def _is_list_of(v: Any, check: Any) -> bool:
    return isinstance(v, list) and all(check(x) for x in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_dim(v: Any) -> bool:
    return v is None or _is_str(v) or _is_int(v)


def _is_input(v: Any) -> bool:
    return isinstance(v, dict) and _is_str(v.get("name")) and _is_list_of(v.get("shape"), _is_dim) \
        and _is_str(v.get("dtype"))


def _is_shards(v: Any) -> bool:
    return (isinstance(v, dict) and _is_list_of(v.get("ids"), _is_int) and _is_int(v.get("count"), 1)
            and _is_int(v.get("size"), 1)
            and _is_list_of(v.get("skipped_files", []), lambda f: _is_list_of(f, _is_str) and len(f) == 2)
            and _is_list_of(v.get("notes", []), _is_str) and _is_list_of(v.get("grayscale_files", []), _is_str))


_METADATA_TYPES = {  # key -> (check, what it must be); a key that is absent is not checked
    "tool": (_is_str, "a string"), "tool_version": (_is_str, "a string"), "model_file": (_is_str, "a string"),
    "model_sha256": (_is_str, "a string"), "data_kind": (_is_str, "a string"),
    "manifest_sha256": (_is_str, "a string"),
    "samples": (_is_int, "an integer >= 0"), "skipped": (_is_int, "an integer >= 0"),
    "num_bins": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "limit": (lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
    "seed": (lambda v: type(v) is int and abs(v) <= _MAX_INT, "an integer"),
    "inputs": (lambda v: _is_list_of(v, _is_input), 'a list of {"name", "shape", "dtype"}'),
    "preprocess": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
                   "an object of objects"),
    "shards": (_is_shards, "an object with ids (integers), count and size (integers >= 1)"),
    "convergence": (lambda v: isinstance(v, dict), "an object"),
}


def check_metadata(metadata: Mapping[str, Any], source: str) -> None:
    """FormatError naming the key when a metadata entry our commands read has the wrong JSON type (other
    people's files: export, inspect, merge and the rest read these keys without checking each time)."""
    for key, (check, what) in _METADATA_TYPES.items():
        if key in metadata and not check(metadata[key]):
            raise FormatError(f"{source}: statistics file metadata {key!r} must be {what}")


def save_stats(path: Union[str, Path], tensors: Union[StatsBundle, Mapping[str, TensorStats]],
               metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write statistics atomically. Accepts a StatsBundle or a name -> TensorStats mapping."""
    bundle = tensors if isinstance(tensors, StatsBundle) else StatsBundle(dict(tensors), dict(metadata or {}))
    write_bytes_atomic(path, bundle.to_bytes())


def load_stats(path: Union[str, Path]) -> StatsBundle:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PtqError(f"{p}: statistics file not found") from None
    except OSError as exc:
        raise PtqError(f"{p}: cannot read ({exc.strerror})") from None
    return StatsBundle.from_bytes(data, str(p))
