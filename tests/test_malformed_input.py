"""Statistics bytes and .ptqs files are untrusted input: malformed ones raise the documented error
(ValueError from TensorStats.from_bytes, FormatError naming the file from load_stats), never
anything else, never a crash; whatever is accepted is consistent."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ptqengine
from ptqengine import TensorStats
from ptqengine.cli.main import app
from ptqengine.errors import FormatError
from ptqengine.statsfile import MAGIC, VERSION, StatsBundle
from ptqengine.algorithms import compute_amax


def _valid_stats() -> list:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3 * 4 * 50).astype(np.float32)
    x[[5, 77]] = [np.nan, -np.inf]
    return [
        TensorStats(num_bins=16, grid_bins=32).update(x),                       # tiny grid
        TensorStats(num_bins=16, grid_bins=64, axis=1).update(x.reshape(3, 4, 50)),
        TensorStats(num_bins=16, grid_bins=32).update(np.zeros(9, np.float32)),  # only zeros
        TensorStats(num_bins=16, grid_bins=32).update(np.array([np.nan], np.float32)),
        TensorStats(num_bins=16, grid_bins=32),                                  # empty
        TensorStats().update(rng.standard_normal(2000).astype(np.float32) * 1e-40),  # subnormal
    ]


VALID = [s.to_bytes() for s in _valid_stats()]
INTERESTING_U32 = [0, 1, 2, 15, 16, 31, 32, 64, 128, 129, 2**24, 2**31 - 1, 2**31, 2**32 - 1,
                   (-1000) & 0xFFFFFFFF, (-149) & 0xFFFFFFFF]

mutation = st.one_of(
    st.tuples(st.just("xor"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("u32"), st.integers(0, 1 << 20),
              st.one_of(st.sampled_from(INTERESTING_U32), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def mutate(data: bytes, steps) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in steps:
        if not b:
            break
        i = pos % len(b)
        if kind == "xor":
            b[i] ^= arg
        elif kind == "u32":
            i -= i % 4  # the header's fields sit at multiples of 4
            b[i:i + 4] = struct.pack("<I", arg)
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i:i + arg]
        else:
            del b[i:]
    return bytes(b)


def check_consistent(s: TensorStats) -> None:
    """What accepted statistics must satisfy: they round-trip and every search runs."""
    assert TensorStats.from_bytes(s.to_bytes()) == s
    assert s.count == s.finite_count + s.nan_count + s.inf_count
    assert int(s._native.signed_counts().sum()) == s.finite_count
    for method in ("max", "percentile", "minmax_asym", "percentile_asym"):
        compute_amax(s, method)
    n = s.num_bins
    compute_amax(s, "entropy", num_quantized_bins=n // 2, start_bin=n // 2)
    compute_amax(s, "mse", start_bin=n // 2)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_statistics_bytes_raise_value_error_or_are_consistent(blob, steps):
    data = mutate(blob, steps)
    try:
        s = TensorStats.from_bytes(data)
    except ValueError:
        return
    check_consistent(s)


@pytest.mark.parametrize("blob", VALID, ids=range(len(VALID)))
def test_every_truncation_is_rejected(blob):
    assert TensorStats.from_bytes(blob).to_bytes() == blob
    for cut in range(len(blob)):
        with pytest.raises(ValueError):
            TensorStats.from_bytes(blob[:cut])


def _field(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# Offsets in the format of csrc/serialize.cpp: magic, version, num_bins, grid_bins, axis, exponent
# (4 bytes each), count, nan, inf (8 each), min, max (4 each), channel count.
BAD_FIELDS = {
    "nan + inf > count": (32, "<Q", 10**6),
    "count below the histogram": (24, "<Q", 1),
    "exponent too large": (20, "<i", 129),
    "exponent not the range's": (20, "<i", 40),
    "min above max": (48, "<f", 1e9),
    "min NaN": (48, "<f", float("nan")),
    "channels without an axis": (56, "<I", 1),
    "grid_bins not a power of two": (12, "<i", 3),
    "axis absurd": (16, "<i", 2**30),
}


@pytest.mark.parametrize("offset,fmt,value", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_broken_invariants_are_rejected(offset, fmt, value):
    with pytest.raises(ValueError, match="corrupt|truncated|trailing"):
        TensorStats.from_bytes(_field(VALID[0], offset, fmt, value))


def test_varint_overflow_is_rejected():
    blob = VALID[2]  # only zeros: one count token on the positive side, nothing else after it
    head = blob[:-(12 + 1 + 12)]  # drop both sides: (first, length, nbytes) + 1 token, then 12
    overlong = bytes([0xFE] + [0xFF] * 8 + [0x03])  # 10 bytes: more than 64 bits
    side = struct.pack("<III", 0, 1, len(overlong)) + overlong + struct.pack("<III", 0, 0, 0)
    with pytest.raises(ValueError, match="varint"):
        TensorStats.from_bytes(head + side)


# --- .ptqs files -----------------------------------------------------------------------------------
def _file_bytes(header, blobs=b"") -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack("<II", VERSION, len(head)) + head + blobs


GOOD_FILE = StatsBundle({"a": _valid_stats()[0], "b": _valid_stats()[1]}, {"model": "m.onnx"}).to_bytes()
ONE = VALID[0]
BAD_HEADERS = {
    "a list": [],
    "missing tensors": {"metadata": {}},
    "missing metadata": {"tensors": []},
    "unknown key": {"metadata": {}, "tensors": [], "x": 1},
    "metadata a list": {"metadata": [], "tensors": []},
    "tensors a dict": {"metadata": {}, "tensors": {}},
    "entry a list": {"metadata": {}, "tensors": [["a", len(ONE)]]},
    "nbytes negative": {"metadata": {}, "tensors": [{"name": "a", "nbytes": -1}]},
    "nbytes a string": {"metadata": {}, "tensors": [{"name": "a", "nbytes": str(len(ONE))}]},
    "nbytes a float": {"metadata": {}, "tensors": [{"name": "a", "nbytes": float(len(ONE))}]},
    "nbytes true": {"metadata": {}, "tensors": [{"name": "a", "nbytes": True}]},
    "name an int": {"metadata": {}, "tensors": [{"name": 3, "nbytes": len(ONE)}]},
    "name missing": {"metadata": {}, "tensors": [{"nbytes": len(ONE)}]},
    "duplicate names": {"metadata": {}, "tensors": [{"name": "a", "nbytes": len(ONE)}] * 2},
    "nbytes beyond the file": {"metadata": {}, "tensors": [{"name": "a", "nbytes": 10**12}]},
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"metadata": {"n": ' + b"9" * 5000 + b'}, "tensors": []}',
    "not UTF-8": b"\xff\xfe",
    "not JSON": b"{metadata",
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_malformed_files_raise_format_error_naming_the_file(header, tmp_path):
    path = tmp_path / "bad.ptqs"
    path.write_bytes(_file_bytes(header, ONE * 2))
    with pytest.raises(FormatError) as info:
        ptqengine.load_stats(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_header_length_beyond_the_file_is_truncation(tmp_path):
    path = tmp_path / "short.ptqs"
    path.write_bytes(MAGIC + struct.pack("<II", VERSION, 10**9) + b"{}")
    with pytest.raises(FormatError, match="truncated"):
        ptqengine.load_stats(path)


def test_cli_reports_a_malformed_file_in_one_line(tmp_path):
    path = tmp_path / "list.ptqs"
    path.write_bytes(_file_bytes([]))
    result = CliRunner().invoke(app, ["export", str(path), "-o", str(tmp_path / "out.cache")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out.cache").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
entries = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]) | json_values,
                                          "nbytes": st.sampled_from([len(ONE), 0, -1]) | json_values}),
                   max_size=3)
headers = st.one_of(json_values, st.fixed_dictionaries({"metadata": json_values, "tensors": entries}),
                    st.fixed_dictionaries({"metadata": st.just({}), "tensors": entries}))


@settings(max_examples=300, deadline=None)
@given(headers, st.integers(0, 3))
def test_any_json_header_raises_format_error_or_loads(header, copies):
    _load_or_format_error(_file_bytes(header, ONE * copies))


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_files_raise_format_error_or_load(steps):
    _load_or_format_error(mutate(GOOD_FILE, steps))


def _load_or_format_error(data: bytes) -> None:
    try:
        bundle = StatsBundle.from_bytes(data, "fuzz.ptqs")
    except FormatError as exc:
        assert str(exc).startswith("fuzz.ptqs: ") and "\n" not in str(exc)
        return
    assert isinstance(bundle.metadata, dict)
    assert StatsBundle.from_bytes(bundle.to_bytes()).to_bytes() == bundle.to_bytes()
    for s in bundle.tensors.values():
        check_consistent(s)
