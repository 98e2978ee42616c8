"""Data sets for the device statistics: (specs, batches), each batch one array (or None) per spec.

The same cases feed the CPU emulation (no GPU) and the GPU itself; the expected statistics are
always the CPU's TensorStats of the same arrays, an implementation the device code shares no loop
with.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Batches = List[List[Optional[np.ndarray]]]
Case = Tuple[List[tuple], Batches]

DEFAULT = (2048, None, None)  # TensorStats defaults: 65,536 grid bins per side


def _gauss(rng, n, scale=1.0, dtype=np.float32):
    with np.errstate(over="ignore"):  # float16 cases overflow to Inf on purpose
        return (rng.standard_normal(n) * scale).astype(dtype)


def gaussian(rng) -> Case:
    return [DEFAULT], [[_gauss(rng, 200_003)], [_gauss(rng, 70_001, 0.5)]]


def relu(rng) -> Case:  # half exact zeros: the zero register
    return [DEFAULT], [[np.maximum(_gauss(rng, 150_000), 0)] for _ in range(2)]


def relu6(rng) -> Case:  # spikes at 0 and at the max (6.0): the hot-bin register
    return [DEFAULT], [[np.clip(_gauss(rng, 120_000, 4.0), 0, 6).astype(np.float32)] for _ in range(3)]


def clipped(rng) -> Case:  # both signs clipped: hot bins on both sides
    return [(256, 8192, None)], [[np.clip(_gauss(rng, 90_000, 2.0), -1, 1).astype(np.float32)] for _ in range(2)]


def negative(rng) -> Case:  # one sign only, the negative one
    return [DEFAULT], [[-np.abs(_gauss(rng, 80_000, 3.0))] for _ in range(2)]


def zeros(rng) -> Case:  # the grid never leaves the empty exponent; -0.0 is +0.0
    return [DEFAULT], [[np.zeros(50_000, np.float32)], [np.full(3000, -0.0, np.float32)]]


def specials(rng) -> Case:  # NaN, Inf, signed zeros, huge and subnormal values among normal ones
    x = _gauss(rng, 40_000)
    x[::97] = np.nan
    x[5::101] = np.inf
    x[7::103] = -np.inf
    x[11::107] = -0.0
    x[13::109] = 1e-42
    x[17::113] = -3e-39
    x[19] = 3.0e38
    only_nan = np.full(1000, np.nan, np.float32)
    return [DEFAULT, (64, 128, None)], [[x, only_nan], [x[::-1].copy(), x]]


def subnormal(rng) -> Case:  # a grid far below 1: the integer bin path (scale above 2^126)
    tiny = (_gauss(rng, 60_000) * 1e-39).astype(np.float32)
    return [DEFAULT, (16, 32, None)], [[tiny, tiny], [tiny * 3, tiny[:999]]]


def half(rng) -> Case:  # float16, including every one of its 65,536 bit patterns
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return [DEFAULT, DEFAULT], [[_gauss(rng, 100_001, 100.0, np.float16), every],
                                [_gauss(rng, 30_000, 3e4, np.float16), every[::-1].copy()]]


def growth(rng) -> Case:  # maxima growing by 1, 3, 10 and 100 doublings, then shrinking
    base = _gauss(rng, 60_000)
    return [DEFAULT, (2048, 4096, None)], [[base * s, base[::3] * s] for s in (1.0, 2.5, 20.0, 2e4, 3e34, 1e-3)]


def powers_of_two(rng) -> Case:  # maxima exactly at a grid top 2^E: the grid must grow there
    x = np.clip(_gauss(rng, 50_000), -1, 1).astype(np.float32)  # max 1.0: E = 1
    y = x.copy()
    y[123] = 2.0  # exactly the top of E = 1
    z = x * 0.5
    z[7] = -4.0
    return [DEFAULT, (16, 32, None)], [[x, x], [y, y], [z, z]]


def per_channel(rng) -> Case:  # NCHW axis 1, NHWC axis -1 (runs of one value), axis 0, float16
    return ([(2048, None, 1), (2048, None, -1), (128, 2048, 0), (2048, None, 1)],
            [[_gauss(rng, (4, 5, 30, 40)), _gauss(rng, (3, 7, 9, 6), 5.0), _gauss(rng, (9, 1000)),
              _gauss(rng, (2, 3, 50, 50), 10.0, np.float16)] for _ in range(2)])


def many(rng) -> Case:  # one launch for many tensors of mixed sizes, dtypes and missing batches
    sizes = [1, 2, 3, 7, 16, 31, 100, 1000, 4097, 20_000, 65_536, 150_001] * 4
    specs = [(2048 if i % 3 else 128, None, None) for i in range(len(sizes))]
    batches = []
    for b in range(3):
        batch = []
        for i, n in enumerate(sizes):
            if (i + b) % 7 == 3:
                batch.append(None)
                continue
            dtype = np.float16 if i % 5 == 1 else np.float32
            x = _gauss(rng, n, 10.0 ** ((i % 9) - 4) * (b + 1), dtype)
            batch.append(np.maximum(x, 0) if i % 4 == 0 else x)
        batches.append(batch)
    return specs, batches


CASES: Dict[str, Callable] = {f.__name__: f for f in (
    gaussian, relu, relu6, clipped, negative, zeros, specials, subnormal, half, growth, powers_of_two,
    per_channel, many)}


def make(name: str, seed: int = 12) -> Case:
    return CASES[name](np.random.default_rng(seed))


def cpu_expected(specs: Sequence[tuple], batches: Batches):
    """TensorStats of every tensor over all batches, on the CPU."""
    from ptqengine import TensorStats

    out = [TensorStats(n, a, grid_bins=g) for n, g, a in specs]
    for batch in batches:
        for stats, x in zip(out, batch):
            if x is not None:
                stats.update(x)
    return out


def rebatch(specs: Sequence[tuple], batches: Batches, order: Sequence[int], parts: int) -> Batches:
    """The same data in another batch order, each batch cut into `parts` updates (flat pieces;
    per-channel tensors and tiny arrays stay whole, in the first piece)."""
    out = []
    for b in order:
        for p in range(parts):
            batch = []
            for spec, x in zip(specs, batches[b]):
                if x is None or spec[2] is not None or x.size < parts:
                    batch.append(x if p == 0 else None)
                else:
                    batch.append(np.array_split(x.reshape(-1), parts)[p])
            out.append(batch)
    return out
