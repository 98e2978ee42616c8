"""The statistics file (.ptqs): every tensor's TensorStats plus metadata, in one file.

Layout: b"PTQSTATS" | u32 version (1) | u32 header length | header JSON (UTF-8, sorted keys) |
the tensors' TensorStats bytes back to back, in the order the header lists them. The header holds
{"metadata": {...}, "tensors": [{"name": str, "nbytes": int}, ...]}. Equal statistics and metadata
give identical files; `export`, Q/DQ, Horizon and analysis features read everything from here.

Memory. A tensor's bytes store only its non-empty bins but declare the whole grid, which loading
allocates: up to 2 x 2^24 counts (256 MiB) for a blob of 60 bytes. So a file may declare at most
MEMORY_PER_TENSOR per tensor (the default grid, 2048 search bins, needs exactly that) plus
MEMORY_ALLOWANCE in all: larger grids fit, forty of the largest do not. The whole file's need is
read from the tensors' headers and checked before anything is allocated; `memory_limit` replaces
the limit.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .atomic import write_bytes_atomic
from .errors import FormatError, PtqError
from .stats import TensorStats

MAGIC = b"PTQSTATS"
VERSION = 1
MIB = 1 << 20
MEMORY_PER_TENSOR = 1 * MIB   # 2 x 65536 counts of 8 bytes: the default grid
MEMORY_ALLOWANCE = 1024 * MIB


def memory_limit_for(tensors: int) -> int:
    """The default memory limit of a statistics file holding this many tensors (see above)."""
    return MEMORY_ALLOWANCE + MEMORY_PER_TENSOR * tensors


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
    def from_bytes(cls, data: bytes, source: str = "<bytes>",
                   memory_limit: Optional[int] = None) -> "StatsBundle":
        """Parse a statistics file; anything malformed raises FormatError naming `source`.

        memory_limit: bytes the loaded statistics may hold (default: memory_limit_for(tensors)).
        """
        entries, metadata, pos = _read_header(data, source)
        blobs: List[Tuple[str, bytes]] = []
        for name, nbytes in entries:
            blob = data[pos:pos + nbytes]
            if len(blob) != nbytes:
                raise FormatError(f"{source}: statistics file is truncated at tensor {name!r}")
            blobs.append((name, blob))
            pos += nbytes
        if pos != len(data):
            raise FormatError(f"{source}: statistics file has trailing bytes")
        needs = [_checked(source, name, TensorStats.memory_needed, blob) for name, blob in blobs]
        limit = memory_limit_for(len(blobs)) if memory_limit is None else int(memory_limit)
        if sum(needs) > limit:
            why = ("" if memory_limit is not None else f" ({_mib(MEMORY_PER_TENSOR)} per tensor + "
                   f"{_mib(MEMORY_ALLOWANCE)}; load_stats(..., memory_limit=) sets another)")
            raise FormatError(f"{source}: its {len(blobs)} tensors declare {_mib(sum(needs))} of histograms, "
                              f"more than the limit of {_mib(limit)}{why}")
        tensors = {name: _checked(source, name, TensorStats.from_bytes, blob, need)
                   for (name, blob), need in zip(blobs, needs)}
        return cls(tensors, metadata)


def _checked(source: str, name: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        raise FormatError(f"{source}: tensor {name!r}: {exc}") from None


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"



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


def _is_constant(pair: Any) -> bool:
    return (isinstance(pair, list) and len(pair) == 2 and _is_str(pair[0]) and type(pair[1]) in (int, float)
            and 0 < pair[1] < math.inf)


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
    # a list of pairs, so that graph order survives the sorted JSON keys
    CONSTANTS_KEY: (lambda v: _is_list_of(v, _is_constant), "a list of [tensor name, positive finite amax] pairs"),
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


def load_stats(path: Union[str, Path], memory_limit: Optional[int] = None) -> StatsBundle:
    """Read a statistics file (FormatError when malformed; memory_limit: see StatsBundle.from_bytes)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PtqError(f"{p}: statistics file not found") from None
    except OSError as exc:
        raise PtqError(f"{p}: cannot read ({exc.strerror})") from None
    return StatsBundle.from_bytes(data, str(p), memory_limit)
