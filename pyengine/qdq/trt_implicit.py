"""TensorRT's implicit int8 (TensorRT <= 10, a calibration cache): which ranges to write, and what they do.

A cache holds one scale per tensor and nothing else: TensorRT computes weight scales itself from the float
weights (per output channel, max|w| / 127), fuses Conv + BatchNormalization + activation, Conv + residual
Add and pooling, and runs a layer in int8 when its inputs have scales. So the weight-side methods of the Q/DQ
export (MSE weight scales, data-driven rounding, bias correction) cannot reach a cache; the activation
ranges can, and they decide its accuracy.

- `choose_cache_ranges`: per tensor, the range the Q/DQ export's per-tensor choice picks (accuracy.refine:
  bound-aware ranges, then for every quantised tensor the candidate (entropy / max / percentile / mse /
  the op's bound) whose reading layers' own output error on calibration samples is least; Concat inputs
  share one scale), under TensorRT's own weight quantisation (CACHE_CHOICE). Tensors no quantised layer
  reads (a Conv's output that TensorRT fuses into the next activation, a network output) have no layer
  to judge them by: they take the candidate with the least error of the tensor itself, which is what
  the mse search minimises (bound-aware as well).
- `simulate_cache`: the Q/DQ model that computes what an engine built from the cache computes in the
  worst case: every tensor TensorRT's placement rules quantise (placement.py: inputs of Conv, Gemm,
  MatMul, the skip input of residual Adds, average pooling, Concat sharing a scale) is quantised with
  the cache's scale, weights per channel with max|w|; a tensor the cache lacks stays float, as TensorRT
  falls back to higher precision there. TensorRT may also choose FP16/FP32 kernels for some layers it
  could run in int8, so a real engine is at least as accurate.
Entries for constant float tensors (TensorRT's own caches list them) come from the model itself:
ptqengine.model.constant_ranges, recorded in the statistics' metadata.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from .accuracy import CANDIDATE_ALGOS, AccuracyOptions, algorithm_ranges, refine
from .bounds import bounded_amax, tensor_bounds
from .capture import Feeds, Sessions
from .graph import prepare
from .placement import plan_qdq

PathLike = Union[str, Path]

# TensorRT quantises weights itself from a cache: per output channel, max|w| / 127, nearest rounding.
TRT_WEIGHTS = dict(weight_scales="max", rounding=False, bias_correction="off")
CACHE_CHOICE = AccuracyOptions(**TRT_WEIGHTS)  # bound-aware ranges and the per-tensor choice on
CACHE_AS_IS = AccuracyOptions(**TRT_WEIGHTS, bounds=False, choose_ranges=False)  # exactly the cache's ranges
SAME_RANGE = 1e-3  # relative: a chosen range this close to an algorithm's is that algorithm's


def choose_cache_ranges(model: onnx.ModelProto, origin: str, amax: Mapping[str, float],
                        stats: Mapping[str, Any], samples: Sequence[Feeds], sessions: Sessions,
                        progress: Optional[Callable[[int, int], None]] = None
                        ) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """(amax per tensor of `amax`, in its order; a summary): the module docstring's choice on `samples`.

    amax: the statistics' entropy ranges (the first candidate, kept when errors tie); stats: tensor ->
    TensorStats of the same calibration (the other candidates come from them); progress(batches done,
    batches)."""
    prepared = prepare(model, origin)
    plan = plan_qdq(prepared.graph, amax, per_channel=True)
    usable = {t: amax[t] for t in plan.activation_tensors}
    ranges = algorithm_ranges(list(amax), stats)  # every tensor's candidates, searched once
    refined = refine(prepared, plan, usable, stats, samples, CACHE_CHOICE, origin, sessions, progress, ranges)
    chosen = {t: float(np.float32(q.scale)) * 127.0 for t, q in refined.qparams.items()}
    own_error = {t: r["mse"] for t, r in ranges.items() if t not in chosen}
    own_error, _ = bounded_amax(own_error, tensor_bounds(prepared.graph), stats)
    out = {t: chosen.get(t, own_error.get(t, amax[t])) for t in amax}
    summary = {"chosen_by_layer_error": len(chosen), "by_own_error": len(own_error),
               "samples": refined.summary.get("samples", 0),
               "winners": dict(sorted(_winners(chosen, ranges).items()))}
    return out, summary


def _winners(chosen: Mapping[str, float], ranges: Mapping[str, Mapping[str, float]]) -> Counter:
    """How many chosen ranges equal each algorithm's (or none of them: an op's bound, a shared Concat scale)."""
    counts: Counter = Counter()
    for tensor, value in chosen.items():
        same = [a for a in CANDIDATE_ALGOS if abs(ranges.get(tensor, {}).get(a, -1.0) - value)
                <= SAME_RANGE * max(value, 1e-30)]
        counts[same[0] if same else "bound or shared"] += 1
    return counts


def simulate_cache(model: Union[PathLike, onnx.ModelProto], amax: Mapping[str, float]):
    """A ptqengine.qdq.QuantizeResult: the Q/DQ model computing TensorRT's implicit int8 from `amax` (worst
    case, see the module docstring). Tensors the cache lacks stay float (report.skipped)."""
    from . import quantize_model

    return quantize_model(model, None, calibration=dict(amax), per_channel=True, accuracy=CACHE_AS_IS)
