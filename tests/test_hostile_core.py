"""Small hostile inputs to the native core (issue 22): statistics that declare more memory than
they hold, counters driven to wrap, counted parts on a grid larger than their values need.

Every input is built here from the format in csrc/serialize.cpp (struct, JSON), not from the code
under test. Cases that could exhaust memory run in a subprocess under RLIMIT_AS and a timeout:
they must end in one line and exit code 2 within seconds, writing nothing."""
from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptqengine import TensorStats
from ptqengine.algorithms import compute_amax
from ptqengine.errors import FormatError
from ptqengine.statsfile import MAGIC, VERSION, StatsBundle, memory_limit_for

NO_AXIS = -(1 << 30)
EMPTY = -1000
INF = float("inf")
MAX_GRID = 1 << 24
GIB = 1 << 30
LIMIT_S = 30  # wall-clock bound of one hostile CLI run (they take 1-3 s here)


# --- the formats, written out from their documentation ------------------------------------------
def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def side(counts: dict) -> bytes:
    """One sign side: u32 first, u32 length, u32 nbytes, tokens (count c: c << 1; n empties)."""
    if not counts:
        return struct.pack("<III", 0, 0, 0)
    first, last = min(counts), max(counts)
    tokens, b = bytearray(), first
    while b <= last:
        if counts.get(b, 0):
            tokens += varint(counts[b] << 1)
            b += 1
        else:
            run = 0
            while b <= last and not counts.get(b, 0):
                run, b = run + 1, b + 1
            tokens += varint(((run - 1) << 1) | 1)
    return struct.pack("<III", first, last - first + 1, len(tokens)) + bytes(tokens)


def stats_blob(num_bins=16, grid_bins=32, axis=NO_AXIS, exponent=EMPTY, count=0, nan=0, inf=0,
               lo=INF, hi=-INF, channel_min=(), channel_max=(), pos=None, neg=None) -> bytes:
    return (b"PTQS" + struct.pack("<Iiiii", 2, num_bins, grid_bins, axis, exponent)
            + struct.pack("<QQQff", count, nan, inf, lo, hi) + struct.pack("<I", len(channel_min))
            + struct.pack(f"<{len(channel_min)}f", *channel_min) + struct.pack(f"<{len(channel_max)}f", *channel_max)
            + side(pos or {}) + side(neg or {}))


def ptqs(blobs: dict, metadata=None) -> bytes:
    tensors = [{"name": n, "nbytes": len(b)} for n, b in blobs.items()]
    head = json.dumps({"metadata": metadata or {}, "tensors": tensors}, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<II", VERSION, len(head)) + head + b"".join(blobs.values())


def ones_blob(count: int, grid_bins=32, num_bins=16) -> bytes:
    """`count` values of 1.0: exponent 1 (1.0 < 2^1), bin 1.0 * G / 2 on the positive side."""
    return stats_blob(num_bins, grid_bins, exponent=1, count=count, lo=1.0, hi=1.0, pos={grid_bins // 2: count})


# --- running the CLI under a memory limit -------------------------------------------------------
def run_limited(args, memory: int, timeout: float = LIMIT_S) -> tuple:
    """(exit code, stdout + stderr, seconds) of the CLI under RLIMIT_AS = memory."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ptqengine.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)
    return proc.returncode, (proc.stdout + proc.stderr).strip(), time.monotonic() - start


def assert_one_line_error(rc: int, out: str, seconds: float, *names: str) -> None:
    assert rc == 2, out
    assert len(out.splitlines()) == 1 and "Traceback" not in out and "MemoryError" not in out, out
    for name in names:
        assert name in out, out
    assert seconds < LIMIT_S


# --- 3. memory a statistics file declares -------------------------------------------------------
LARGEST = stats_blob(num_bins=16, grid_bins=MAX_GRID)  # 60 bytes declaring 2 x 2^24 counts


def test_the_largest_grid_is_declared_in_a_few_bytes():
    assert len(LARGEST) < 100
    assert TensorStats.memory_needed(LARGEST) == 2 * MAX_GRID * 8  # 256 MiB, from the header alone


@pytest.mark.parametrize("command", [["inspect"], ["export", "-o", "{out}"]])
def test_forty_largest_grids_are_refused_in_one_line_before_allocating(tmp_path, command):
    path = tmp_path / "forty.ptqs"
    path.write_bytes(ptqs({f"t{i}": LARGEST for i in range(40)}))
    assert path.stat().st_size < 5000
    out_file = tmp_path / "out.cache"
    args = [a.format(out=out_file) for a in command]
    # 600 MiB of address space: two of those grids would not fit, so a refusal after allocating
    # would show as MemoryError; before the fix this ran past 60 s and 10 GiB.
    rc, out, seconds = run_limited([args[0], path, *args[1:]], memory=600 << 20)
    assert_one_line_error(rc, out, seconds, str(path), "10,240 MiB")
    assert not out_file.exists()


def test_one_largest_grid_loads_within_its_stated_memory(tmp_path):
    path = tmp_path / "one.ptqs"
    path.write_bytes(ptqs({"t": ones_blob(5, grid_bins=MAX_GRID, num_bins=1 << 19)}))
    rc, out, seconds = run_limited(["inspect", path], memory=GIB)
    assert rc == 0, out
    assert seconds < LIMIT_S


def test_the_file_limit_is_checked_before_any_tensor_loads():
    data = ptqs({"a": ones_blob(3), "big": LARGEST, "c": LARGEST})
    need = 2 * 2 * MAX_GRID * 8 + 2 * 32 * 8
    bundle = StatsBundle.from_bytes(data, "x.ptqs", memory_limit=need)
    assert bundle.tensors["a"].count == 3
    with pytest.raises(FormatError, match=r"^x\.ptqs: its 3 tensors declare 512 MiB .* limit of 511 MiB$"):
        StatsBundle.from_bytes(data, "x.ptqs", memory_limit=need - (1 << 20))
    assert memory_limit_for(40) == GIB + 40 * (1 << 20)


CHILD = """
import resource, sys
from ptqengine import _core
blob = bytes.fromhex(sys.argv[1])
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20),) * 2)  # far below the 256 MiB grid
try:
    _core.TensorStats.from_bytes(blob, 1 << 20)
except ValueError as exc:
    print(exc)
"""


def test_core_refuses_a_grid_over_its_memory_limit_without_allocating_it():
    proc = subprocess.run([sys.executable, "-c", CHILD, LARGEST.hex()], capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("statistics need 256 MiB of memory (a grid of 16777216 bins), "
                                   "more than the limit of 1 MiB")


def test_channel_count_is_bounded_by_the_bytes():
    blob = bytearray(ones_blob(1))
    struct.pack_into("<I", blob, 56, 2**32 - 1)  # four billion channels, none of them present
    with pytest.raises(ValueError, match="truncated"):
        TensorStats.from_bytes(bytes(blob))


def test_mse_over_a_huge_search_histogram_is_refused_quickly():
    s = TensorStats.from_bytes(ones_blob(7, grid_bins=1 << 21, num_bins=1 << 20))
    start = time.monotonic()
    with pytest.raises(ValueError, match="more than the limit of 2\\^28"):  # would be ~2^40 steps
        compute_amax(s, "mse")
    assert time.monotonic() - start < 5
    assert compute_amax(TensorStats.from_bytes(ones_blob(7, grid_bins=1 << 15, num_bins=1 << 14)), "mse") > 0


def test_export_names_the_tensor_whose_search_is_refused(tmp_path):
    path = tmp_path / "wide.ptqs"
    path.write_bytes(ptqs({"ok": ones_blob(3, grid_bins=1 << 16, num_bins=2048), "wide": ones_blob(7, grid_bins=1 << 21, num_bins=1 << 20)}))
    out = tmp_path / "o.cache"
    rc, text, seconds = run_limited(["export", path, "-o", out, "--algo", "mse"], memory=GIB)
    assert_one_line_error(rc, text, seconds, "tensor 'wide'", "2^28")
    assert not out.exists()


# --- 4. counters that would wrap ---------------------------------------------------------------
def part_file(path: Path, shard: int, count: int) -> Path:
    meta = {"samples": 1, "shards": {"ids": [shard], "count": 4, "size": 1}}
    path.write_bytes(ptqs({"x": ones_blob(count)}, meta))
    return path


def test_merging_parts_past_two_to_the_64_is_one_line_and_writes_nothing(tmp_path):
    parts = [part_file(tmp_path / f"p{i}.ptqs", i, 2**62) for i in range(4)]
    out = tmp_path / "merged.ptqs"
    rc, text, seconds = run_limited(["merge", *parts, "-o", out], memory=GIB)
    # two parts hold 2^63 in one bin: the limit of the format (a count c is stored as c << 1)
    assert_one_line_error(rc, text, seconds, "p1.ptqs", "tensor 'x'", "2^63")
    assert not out.exists()


def test_merging_parts_that_fit_writes_a_file_export_reads(tmp_path):
    parts = [part_file(tmp_path / f"p{i}.ptqs", i, 2**60) for i in range(4)]
    out = tmp_path / "merged.ptqs"
    rc, text, _ = run_limited(["merge", *parts, "-o", out, "-q"], memory=GIB)
    assert rc == 0, text
    s = StatsBundle.from_bytes(out.read_bytes()).tensors["x"]
    assert s.count == 2**62 and compute_amax(s, "max") == 1.0


def test_self_merges_stop_before_the_count_wraps():
    s = TensorStats(num_bins=16, grid_bins=32).update(np.arange(1, 1025, dtype=np.float32))
    counts = [s.count]
    with pytest.raises(ValueError, match="wrap"):
        for _ in range(80):
            before = s.to_bytes()
            s.merge(s)
            counts.append(s.count)
    assert counts == [1024 << k for k in range(len(counts))]  # doubling, never wrapped
    assert counts[-1] == 2**63
    assert s.to_bytes() == before  # the refused merge changed nothing
    assert TensorStats.from_bytes(before) == s
    assert compute_amax(s, "max") == 1024.0


def test_a_bin_reaching_two_to_the_63_is_refused_and_changes_nothing():
    a = TensorStats.from_bytes(ones_blob(2**62 + 1))
    before = a.to_bytes()
    with pytest.raises(ValueError, match="2\\^63"):
        a.merge(TensorStats.from_bytes(ones_blob(2**62)))
    assert a.to_bytes() == before
    # the same numbers of values spread over two bins fit, and serialise
    b = TensorStats.from_bytes(stats_blob(exponent=0, count=2**62, lo=0.5, hi=0.5, pos={16: 2**62}))
    a.merge(b)
    assert a.count == 2**63 + 1 and TensorStats.from_bytes(a.to_bytes()) == a


def test_a_per_channel_merge_refused_for_its_counts_changes_nothing():
    chan = TensorStats.from_bytes(stats_blob(axis=0, exponent=1, count=2**62, lo=1.0, hi=1.0,
                                             channel_min=(1.0, INF), channel_max=(1.0, -INF), pos={16: 2**62}))
    fresh = TensorStats.from_bytes(stats_blob(axis=0, exponent=1, count=2**62, lo=1.0, hi=1.0, pos={16: 2**62}))
    before = fresh.to_bytes()
    with pytest.raises(ValueError, match="2\\^63"):
        fresh.merge(chan)
    assert fresh.to_bytes() == before and fresh.channel_min.size == 0


def test_update_refuses_to_pass_the_count_limit():
    s = TensorStats.from_bytes(stats_blob(exponent=1, count=2**64 - 2, nan=2**64 - 2 - 5, lo=1.0, hi=1.0,
                                          pos={16: 5}))
    before = s.to_bytes()
    with pytest.raises(ValueError, match="wrap"):
        s.update(np.ones(3, np.float32))
    assert s.to_bytes() == before
    s.update(np.ones(1, np.float32))
    assert s.count == 2**64 - 1


def absorb(native, exponent, counts, count, lo, hi, nan=0, inf=0):
    native.absorb_counts(exponent, np.asarray(counts, np.uint64), count, nan, inf, lo, hi)


def test_absorb_counts_checks_its_counters():
    s = TensorStats.from_bytes(ones_blob(2**63 - 1))
    before = s.to_bytes()
    counts = np.zeros(64, np.uint64)
    counts[16] = 1
    with pytest.raises(ValueError, match="2\\^63"):
        absorb(s._native, 1, counts, 1, 1.0, 1.0)
    counts[16] = 2**63  # one bin over the limit by itself
    with pytest.raises(ValueError, match="2\\^63"):
        absorb(TensorStats(16, grid_bins=32)._native, 1, counts, 2**63, 1.0, 1.0)
    assert s.to_bytes() == before


def test_absorb_counts_on_a_grid_larger_than_the_values_need_is_refused():
    # 1.0 counted on the grid of 2^5: bin 1.0 * 32 / 32 = 1. The whole object would keep that
    # grid, whose bytes from_bytes calls corrupt.
    counts = np.zeros(64, np.uint64)
    counts[1] = 1
    s = TensorStats(16, grid_bins=32)
    with pytest.raises(ValueError, match="larger than the values need"):
        absorb(s._native, 5, counts, 1, 1.0, 1.0)
    assert s.to_bytes() == TensorStats(16, grid_bins=32).to_bytes()
    # on the object's own grid (it already holds 20.0 < 2^5) the same part is fine
    s.update(np.array([20.0], np.float32))
    absorb(s._native, 5, counts, 1, 1.0, 1.0)
    assert TensorStats.from_bytes(s.to_bytes()) == s
    assert s.count == 2 and s.min == 1.0 and s.max == 20.0


# --- fuzzing: an accepted mutation is a valid object ----------------------------------------------
def _valid() -> list:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(600).astype(np.float32)
    x[[3, 9]] = [np.nan, np.inf]
    return [TensorStats(16, grid_bins=32).update(x).to_bytes(),
            TensorStats(16, grid_bins=64, axis=0).update(x.reshape(6, 100)).to_bytes(),
            ones_blob(2**62), ones_blob(3, grid_bins=1 << 12, num_bins=16)]


VALID = _valid()


def flip(data: bytes, flips) -> bytes:
    b = bytearray(data)
    for pos, mask in flips:
        b[pos % len(b)] ^= mask
    return bytes(b)


def assert_valid_object(s: TensorStats) -> None:
    """Its own bytes load to an equal object with the same bytes, and the counts add up."""
    b = s.to_bytes()
    again = TensorStats.from_bytes(b)
    assert again == s and again.to_bytes() == b
    assert int(s._native.signed_counts().sum(dtype=np.uint64)) == s.finite_count
    assert s.count == s.finite_count + s.nan_count + s.inf_count


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))),
       st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=3))
def test_an_accepted_byte_flip_is_a_valid_reloadable_object(which, flips):
    try:
        s = TensorStats.from_bytes(flip(VALID[which], flips))
    except ValueError:
        return
    assert_valid_object(s)
    # and whatever it merges with, or absorbs as counts, either is refused or stays valid
    for other in (s, TensorStats.from_bytes(VALID[which])):
        t = TensorStats.from_bytes(s.to_bytes())
        try:
            t.merge(other)
        except ValueError:
            assert t == s  # a refused merge changes nothing
            continue
        assert_valid_object(t)
    fresh = TensorStats(s.num_bins, s.axis, grid_bins=s.grid_bins)
    lo, hi = s._native.min, s._native.max
    cmin = s._native.channel_min() if s.axis is not None else None
    cmax = s._native.channel_max() if s.axis is not None else None
    if s.axis is not None and cmin.size == 0:
        return
    fresh._native.absorb_counts(s._native.exponent, s._native.signed_counts(), s.count, s.nan_count,
                                s.inf_count, lo, hi, cmin, cmax)
    assert fresh == s


@settings(max_examples=200, deadline=None)
@given(st.integers(-3, 8), st.dictionaries(st.integers(0, 63), st.integers(1, 2**63 - 1), max_size=4),
       st.floats(-300, 300, width=32), st.floats(-300, 300, width=32))
def test_absorbed_counts_are_refused_or_give_a_valid_object(exponent, bins, a, b):
    counts = np.zeros(64, np.uint64)
    for k, v in bins.items():
        counts[k] = v
    total = sum(bins.values())
    s = TensorStats(16, grid_bins=32).update(np.array([0.75], np.float32))
    before = s.to_bytes()
    try:
        absorb(s._native, exponent, counts, min(total, 2**64 - 1), min(a, b), max(a, b))
    except ValueError:
        assert s.to_bytes() == before
        return
    assert_valid_object(s)
