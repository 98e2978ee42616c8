"""Symmetric int8 quantisation of weights and activation scales, as TensorRT's explicit quantization takes them.

TensorRT (developer guide, "Explicit Quantization":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html)
uses symmetric int8 with zero point 0: q = clamp(round(x / scale), -128, 127), x' = q * scale. Weights
are quantised per output channel, activations per tensor; weights may be stored pre-quantised as int8
initializers feeding a DequantizeLinear (TensorRT 10+), which makes the file about 4x smaller.

Scales here: scale = amax / 127, amax = max |w| over the channel (weights) or the calibrated range
(activations). Rounding is to nearest, ties to even, as ONNX QuantizeLinear specifies
(https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html). Weights then lie in [-127, 127].

All-zero weight channel: max |w| = 0 would give scale 0, which TensorRT's parser rejects (scales must be
strictly positive) and which divides by zero. Such a channel gets scale 1.0 instead (ZERO_CHANNEL_SCALE):
every weight in it is 0 and quantises to exactly 0 whatever the scale, so the value is free; 1.0 keeps
the scale a plain, normal float rather than a denormal that some parsers flush to zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

QMAX = 127
ZERO_CHANNEL_SCALE = 1.0


@dataclass
class QuantizedWeight:
    """int8 values, float32 scale (per channel: shape [C]; per tensor: shape []), the channel axis or None."""

    values: np.ndarray
    scale: np.ndarray
    axis: Optional[int]


def channel_absmax(weight: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but `axis` (float64, exact for float32 inputs)."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return moved.max(axis=1) if moved.shape[1] else np.zeros(moved.shape[0])


def scales_from_absmax(absmax: np.ndarray) -> np.ndarray:
    """float32 scale = absmax / 127, with ZERO_CHANNEL_SCALE where absmax is 0."""
    absmax = np.asarray(absmax, dtype=np.float64)
    scale = np.where(absmax > 0, absmax / QMAX, ZERO_CHANNEL_SCALE)
    return scale.astype(np.float32)


def quantize_weight(weight: np.ndarray, axis: Optional[int]) -> QuantizedWeight:
    """Per-channel along `axis` (or per tensor when axis is None) symmetric int8."""
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        scale = scales_from_absmax(np.array(np.abs(w).max() if w.size else 0.0))
        values = _round_clip(w, np.float32(scale))
        return QuantizedWeight(values, scale.reshape(()), None)
    axis = axis % w.ndim
    scale = scales_from_absmax(channel_absmax(w, axis))
    shape = [1] * w.ndim
    shape[axis] = -1
    values = _round_clip(w, scale.reshape(shape))
    return QuantizedWeight(values, scale, axis)


def _round_clip(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # float32 division, as QuantizeLinear computes it, so a runtime re-quantising the float weights agrees
    q = np.rint(w / scale)
    return np.clip(q, -QMAX - 1, QMAX).astype(np.int8)


def activation_scale(amax: float) -> Optional[np.float32]:
    """Per-tensor scale amax / 127, or None when amax cannot give a valid (finite, positive) scale."""
    if not np.isfinite(amax) or amax <= 0:
        return None
    scale = np.float32(amax / QMAX)
    return scale if scale > 0 and np.isfinite(scale) else None
