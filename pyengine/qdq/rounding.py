"""Data-driven rounding of weights: round up or down so that each layer's OUTPUT stays closest to FP32.

Rounding every weight to its nearest int8 level minimises the weight error, not the layer's output error
||(W - W_q) X||^2 over the layer's inputs X: errors of weights that multiply correlated inputs add up or
cancel. With H = X X^T (the layer's input second moments on the calibration data), the output error of
an output channel with weight error e is e^T H e. This module uses the closed-form greedy solution of
GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", https://arxiv.org/abs/2210.17323, after Optimal Brain Quantization, Frantar & Alistarh
2022): quantise the input columns one at a time and move each column's rounding error onto the columns
not yet quantised, weighted by the inverse of H (its upper Cholesky factor), so the later roundings
compensate it. It is the cheap relative of AdaRound (Nagel et al. 2020, https://arxiv.org/abs/2004.10568):
no gradient descent, one Cholesky per layer (per group for grouped / depthwise convolutions).

Scales are fixed beforehand (weights.py); only the integers change. "Where it pays": a layer keeps the
result only if its output error e^T H e on the calibration data is below nearest rounding's, else it
keeps nearest rounding. Layers: Conv (1-D and 2-D, explicit pads), Gemm (transA = 0), MatMul with a 2-D
constant right operand; others (ConvTranspose, auto_pad) keep nearest rounding.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from .weights import QMAX, QuantizedWeight

log = logging.getLogger(__name__)

ROWS_PER_BATCH = 1024  # input positions sampled per batch for H (fixed seed): bounds the cost on big maps
DAMPING = 0.01  # fraction of mean(diag H) added to the diagonal, as GPTQ does, so H is invertible


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def supported(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    if node.op_type == "Conv":
        pad_mode = _attr(node, "auto_pad", b"NOTSET")
        return weight.ndim in (3, 4) and (pad_mode.decode() if isinstance(pad_mode, bytes) else pad_mode) in ("NOTSET", "VALID")
    if node.op_type == "Gemm":
        return weight.ndim == 2 and not _attr(node, "transA", 0)
    return node.op_type == "MatMul" and weight.ndim == 2


def weight_rows(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """[groups, channels per group, inputs per channel] float64 view of the weight, rows = output channels."""
    if node.op_type == "Conv":
        groups = int(_attr(node, "group", 1))
        return weight.reshape(groups, weight.shape[0] // groups, -1).astype(np.float64)
    rows = weight if (node.op_type == "Gemm" and _attr(node, "transB", 0)) else weight.T
    return rows.reshape(1, rows.shape[0], rows.shape[1]).astype(np.float64)


def rows_to_weight(node: onnx.NodeProto, rows: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Conv":
        return rows.reshape(shape)
    flat = rows.reshape(rows.shape[1], rows.shape[2])
    return flat.reshape(shape) if (node.op_type == "Gemm" and _attr(node, "transB", 0)) else flat.T.reshape(shape)


def _conv_patches(node: onnx.NodeProto, x: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[groups, rows, inputs per group] im2col rows of x at up to ROWS_PER_BATCH sampled output positions."""
    spatial = weight.ndim - 2
    kernel = weight.shape[2:]
    strides = list(_attr(node, "strides", [1] * spatial))
    dilations = list(_attr(node, "dilations", [1] * spatial))
    pads = list(_attr(node, "pads", [0] * (2 * spatial)))
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    span = [d * (k - 1) + 1 for d, k in zip(dilations, kernel)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
        + tuple(slice(None, None, d) for d in dilations)
    windows = windows[index]  # [N, C, out..., k...]
    out_shape = windows.shape[2:2 + spatial]
    positions = x.shape[0] * int(np.prod(out_shape))
    take = rng.choice(positions, size=min(ROWS_PER_BATCH, positions), replace=False)
    coords = np.unravel_index(np.sort(take), (x.shape[0],) + tuple(out_shape))
    picked = windows[(coords[0], slice(None)) + tuple(coords[1:])]  # [R, C, k...]
    groups = int(_attr(node, "group", 1))
    picked = picked.reshape(picked.shape[0], groups, -1)
    return np.ascontiguousarray(picked.transpose(1, 0, 2), dtype=np.float32)


def input_rows(node: onnx.NodeProto, x: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[groups, rows, inputs per group]: the vectors each output channel's weights multiply."""
    if node.op_type == "Conv":
        return _conv_patches(node, x, weight, rng)
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > ROWS_PER_BATCH:
        flat = flat[np.sort(rng.choice(flat.shape[0], size=ROWS_PER_BATCH, replace=False))]
    return flat.astype(np.float32)[None]


class HessianSum:
    """Running sum of X^T X per group for one layer."""

    def __init__(self) -> None:
        self.h: Optional[np.ndarray] = None
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        # float32 products (batched BLAS), float64 running sum: one batch's sum is short enough for float32
        h = np.matmul(rows.transpose(0, 2, 1), rows).astype(np.float64)
        self.h = h if self.h is None else self.h + h
        self.rows += rows.shape[1]


def _quantize_columns(rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rows / scale), -QMAX - 1, QMAX)


def gptq(rows: np.ndarray, scale: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Integer weights [G, C, K] for float rows [G, C, K], scales [G, C, 1] and H [G, K, K] (module docstring)."""
    h = h.copy()
    k = h.shape[-1]
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, DAMPING * diag.mean(axis=1, keepdims=True))
    hinv = np.linalg.inv(h)
    upper = np.transpose(np.linalg.cholesky(hinv), (0, 2, 1))  # H^-1 = U^T U
    w = rows.copy()
    q = np.empty_like(w)
    for j in range(k):
        q[:, :, j] = _quantize_columns(w[:, :, j], scale[:, :, 0])
        err = (w[:, :, j] - q[:, :, j] * scale[:, :, 0]) / upper[:, j, j][:, None]
        w[:, :, j + 1:] -= err[:, :, None] * upper[:, None, j, j + 1:]
    return q


def output_error(rows: np.ndarray, deq: np.ndarray, h: np.ndarray) -> float:
    e = rows - deq
    return float(np.sum(np.matmul(e, h) * e))


def round_layer(node: onnx.NodeProto, weight: np.ndarray, nearest: QuantizedWeight,
                h: np.ndarray) -> Tuple[QuantizedWeight, Dict[str, float]]:
    """GPTQ rounding of `weight` with the scales of `nearest`, kept only if it lowers e^T H e."""
    rows = weight_rows(node, weight)
    groups, per_group = rows.shape[0], rows.shape[1]
    if nearest.axis is None:
        scale = np.full((groups, per_group, 1), float(nearest.scale), np.float64)
    else:
        scale = nearest.scale.astype(np.float64).reshape(groups, per_group, 1)
    base = weight_rows(node, nearest.values.astype(np.float64)) * scale
    ints = gptq(rows, scale, h)
    before, after = output_error(rows, base, h), output_error(rows, ints * scale, h)
    stats = {"nearest": before, "gptq": after}
    if not after < before:
        return nearest, stats
    values = rows_to_weight(node, ints, weight.shape).astype(np.int8)
    return QuantizedWeight(values, nearest.scale, nearest.axis), stats
