"""DeviceStatsSet's host twin for tests without a GPU: the same specs, planner, state layout and
conversion (pyengine/gpu), with the four kernel launches run by tests/native/device_emulator.cpp,
which executes the kernels' own decision code (csrc/cuda/stats_logic.h) on the CPU."""
from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from ptqengine.gpu.convert import to_tensor_stats
from ptqengine.gpu.layout import KEY_MINUS_INF, KEY_PLUS_INF, initial_states, total_counts
from ptqengine.gpu.tensors import DeviceTensor
from ptqengine.gpu.worklist import normalize_specs, plan_update

ROOT = Path(__file__).resolve().parent.parent
NATIVE = Path(__file__).resolve().parent / "native"


def cxx() -> Optional[str]:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def build(source: str, out_dir: Path) -> Path:
    """Compile tests/native/<source> against csrc/ (the core's own headers)."""
    exe = out_dir / Path(source).stem
    subprocess.run([cxx(), "-std=c++17", "-O2", "-Wall", "-Wextra", f"-I{ROOT / 'csrc'}",
                    f"-I{ROOT / 'csrc' / 'cuda'}", str(NATIVE / source), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


class EmulatedStatsSet:
    """update() and to_host() as DeviceStatsSet, on host arrays; launch geometry is explicit."""

    def __init__(self, specs: Sequence[Any], emulator: Path, workdir: Path, *, blocks: int = 7,
                 threads: int = 64, capacity: int = 4096, values_per_bin: int = 4,
                 misalign: int = 0) -> None:
        self.specs = normalize_specs(specs)
        self.states = initial_states([s.grid_bins for s in self.specs])
        self.counts = np.zeros(total_counts([s.grid_bins for s in self.specs]), dtype=np.uint64)
        self.channel_keys = np.zeros(0, dtype=np.int32)
        self.channel_counts: List[Optional[int]] = [None] * len(self.specs)
        self.channel_offsets: List[Optional[int]] = [None] * len(self.specs)
        self.emulator, self.dir = emulator, workdir
        self.geometry = [str(blocks), str(blocks), str(threads), str(capacity), str(values_per_bin)]
        self.misalign = misalign  # elements between each array and a 16-byte boundary
        self.routes: Counter = Counter()  # values per route of count_value(), over all updates

    def _keys(self, i: int, channels: int) -> int:
        if self.channel_offsets[i] is None:
            self.channel_offsets[i] = len(self.channel_keys)
            self.channel_counts[i] = channels
            init = np.concatenate([np.full(channels, KEY_PLUS_INF, np.int32),
                                   np.full(channels, KEY_MINUS_INF, np.int32)])
            self.channel_keys = np.concatenate([self.channel_keys, init])
        return 4 * self.channel_offsets[i]

    def update(self, arrays: Sequence[Optional[np.ndarray]]) -> None:
        blob, tensors = bytearray(256), []
        for a in arrays:  # host "device memory": arrays at known offsets in one file
            if a is None:
                tensors.append(None)
                continue
            a = np.ascontiguousarray(a)
            pad = (-len(blob)) % 256 + self.misalign * a.itemsize
            blob += bytes(pad)
            tensors.append(DeviceTensor(len(blob), a.shape, a.dtype))
            blob += a.tobytes()
        plan = plan_update(self.specs, tensors, None, self.channel_counts, self._keys)
        for name, value in (("states", self.states), ("counts", self.counts), ("channels", self.channel_keys),
                            ("work", plan.work), ("axis_work", plan.axis_work)):
            (self.dir / f"{name}.bin").write_bytes(value.tobytes())
        (self.dir / "data.bin").write_bytes(bytes(blob))
        subprocess.run([str(self.emulator), "update", str(self.dir), *self.geometry], check=True,
                       capture_output=True, text=True)
        self.states = np.frombuffer((self.dir / "states.bin").read_bytes(), dtype=self.states.dtype).copy()
        self.counts = np.frombuffer((self.dir / "counts.bin").read_bytes(), dtype=np.uint64).copy()
        self.channel_keys = np.frombuffer((self.dir / "channels.bin").read_bytes(), dtype=np.int32).copy()
        for line in (self.dir / "routes.txt").read_text().splitlines():
            name, value = line.split()
            self.routes[name] += int(value)

    def to_host(self):
        out = []
        for i, spec in enumerate(self.specs):
            off = int(self.states[i]["counts_offset"])
            keys = None
            if self.channel_offsets[i] is not None:
                k = self.channel_offsets[i]
                keys = self.channel_keys[k:k + 2 * self.channel_counts[i]]
            out.append(to_tensor_stats(spec, self.states[i], self.counts[off:off + 2 * spec.grid_bins],
                                       keys, f"tensor {i}"))
        return out
