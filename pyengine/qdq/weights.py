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

Weight-error scales (`scale_method="mse"`, the default of the Q/DQ export): per channel, the clipping
c * max|w| for c in CLIP_CANDIDATES that minimises sum (w - w_q)^2 over the channel. c = 1 (max|w|) is
a candidate, so the error is never above max|w|'s; a lone outlier weight is clipped when rounding the
other weights more finely pays for it (Banner et al. 2019, "Post-training 4-bit quantization",
https://arxiv.org/abs/1810.05723; Nagel et al. 2021, "A White Paper on Neural Network Quantization",
section 3.4.3, MSE range setting: https://arxiv.org/abs/2106.08295). TensorRT takes the scales as given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

QMAX = 127
ZERO_CHANNEL_SCALE = 1.0
CLIP_CANDIDATES = np.linspace(0.5, 1.0, 101)  # fractions of max|w| tried by the weight-error search
SCALE_METHODS = ("max", "mse")


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


def channel_rows(weight: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """float32 view [channels, values per channel] (one row when axis is None)."""
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis % w.ndim, 0).reshape(w.shape[axis], -1)


def mse_scales(rows: np.ndarray, candidates: np.ndarray = CLIP_CANDIDATES) -> np.ndarray:
    """Per row, the float32 scale c * max|w| / 127 (c in candidates) with the least sum of squared error."""
    # float64 before the products: numpy 1.x would keep float32 * np.float64 in float32 (numpy 2 does not),
    # and the rounding of c * max|w| would then depend on the numpy version
    absmax = (np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0])).astype(np.float64)
    best = scales_from_absmax(absmax)
    best_err = _row_error(rows, best)
    for c in candidates:
        scale = scales_from_absmax(absmax * c)
        err = _row_error(rows, scale)
        better = err < best_err
        best, best_err = np.where(better, scale, best), np.where(better, err, best_err)
    return best.astype(np.float32)


def _row_error(rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    s = scale.reshape(-1, 1)
    deq = _round_clip(rows, s).astype(np.float32) * s
    return ((rows - deq).astype(np.float64) ** 2).sum(axis=1)


def weight_scales(weight: np.ndarray, axis: Optional[int], method: str = "max") -> np.ndarray:
    """float32 scales along `axis` (shape [C]) or per tensor (shape []) by `method` (SCALE_METHODS)."""
    if method not in SCALE_METHODS:
        raise ValueError(f"weight scale method must be one of {', '.join(SCALE_METHODS)}, got {method!r}")
    rows = channel_rows(weight, axis)
    scale = mse_scales(rows) if method == "mse" else scales_from_absmax(
        np.abs(rows).max(axis=1) if rows.size else np.zeros(rows.shape[0]))
    return scale if axis is not None else scale.reshape(())


def quantize_weight(weight: np.ndarray, axis: Optional[int], method: str = "max",
                    scale: Optional[np.ndarray] = None) -> QuantizedWeight:
    """Per-channel along `axis` (or per tensor when axis is None) symmetric int8.

    scale: given scales (e.g. from a rounding search); else `method` ("max": max|w| / 127; "mse").
    """
    w = np.asarray(weight, dtype=np.float32)
    axis = None if axis is None else axis % w.ndim
    scale = weight_scales(w, axis, method) if scale is None else np.asarray(scale, np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    return QuantizedWeight(_round_clip(w, scale.reshape(shape)), scale, axis)


def dequantize(q: QuantizedWeight) -> np.ndarray:
    """float32 values the DequantizeLinear of `q` produces."""
    shape = [1] * q.values.ndim
    if q.axis is not None:
        shape[q.axis] = -1
    return q.values.astype(np.float32) * q.scale.reshape(shape)


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


@dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantisation: q = clamp(round(x / scale) + zero_point) in int8 or uint8."""

    scale: float
    zero_point: int = 0
    signed: bool = True

    @property
    def lo(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def qmin(self) -> int:
        return -QMAX - 1 if self.signed else 0

    def zero_point_array(self) -> np.ndarray:
        return np.array(self.zero_point, dtype=np.int8 if self.signed else np.uint8)


def symmetric_qparams(amax: float) -> Optional[QParams]:
    scale = activation_scale(amax)
    return None if scale is None else QParams(float(scale))


def asymmetric_qparams(amax: float, observed_min: float, observed_max: float) -> Optional[QParams]:
    """uint8 with a zero point over [max(min, -amax), min(max, amax)], widened to hold 0 exactly.

    The symmetric clipping amax is kept on each side, but a side the values never reach (a ReLU output's
    negative half, HardSwish's [-0.375, 0)) costs no levels: that is what zero points buy where the
    target takes them (onnxruntime, Horizon; TensorRT does not).
    """
    if activation_scale(amax) is None:
        return None
    lo = min(0.0, max(float(observed_min), -amax)) if np.isfinite(observed_min) else -amax
    hi = max(0.0, min(float(observed_max), amax)) if np.isfinite(observed_max) else amax
    scale = np.float32((hi - lo) / 255.0)
    if not (scale > 0 and np.isfinite(scale)):
        return None
    zero_point = int(np.clip(np.rint(-lo / float(scale)), 0, 255))
    return QParams(float(scale), zero_point, signed=False)
