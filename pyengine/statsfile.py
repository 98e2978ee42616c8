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
from typing import Any, Dict, Mapping, Optional, Union

from .atomic import write_bytes_atomic
from .errors import FormatError, PtqError
from .stats import TensorStats

MAGIC = b"PTQSTATS"
VERSION = 1


@dataclass
class StatsBundle:
    """Named statistics (insertion order = graph order) and free-form metadata."""

    tensors: Dict[str, TensorStats]
    metadata: Dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        blobs = [(name, s.to_bytes()) for name, s in self.tensors.items()]
        header = {"metadata": self.metadata,
                  "tensors": [{"name": n, "nbytes": len(b)} for n, b in blobs]}
        head = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return MAGIC + struct.pack("<II", VERSION, len(head)) + head + b"".join(b for _, b in blobs)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "StatsBundle":
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
            raise FormatError(f"{source}: not a ptqengine statistics file")
        version, head_len = struct.unpack_from("<II", data, len(MAGIC))
        if version != VERSION:
            raise FormatError(f"{source}: statistics file version {version} is not supported")
        start = len(MAGIC) + 8
        try:
            header = json.loads(data[start:start + head_len].decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FormatError(f"{source}: statistics file header is corrupt") from None
        pos = start + head_len
        tensors: Dict[str, TensorStats] = {}
        for entry in header.get("tensors", []):
            blob = data[pos:pos + entry["nbytes"]]
            if len(blob) != entry["nbytes"]:
                raise FormatError(f"{source}: statistics file is truncated at tensor {entry['name']!r}")
            try:
                tensors[entry["name"]] = TensorStats.from_bytes(blob)
            except ValueError as exc:
                raise FormatError(f"{source}: tensor {entry['name']!r}: {exc}") from None
            pos += entry["nbytes"]
        if pos != len(data):
            raise FormatError(f"{source}: statistics file has trailing bytes")
        return cls(tensors, header.get("metadata", {}))


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
