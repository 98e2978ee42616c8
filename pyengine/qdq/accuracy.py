"""The accuracy methods of the static Q/DQ export, in the order they depend on each other.

1. Bound-aware ranges (bounds.py): clamp at an op's bound; never clip below a pile-up at the bound.
2. Weight scales per output channel that minimise the weight error (weights.py, `weight_scales="mse"`).
3. Data-driven rounding of weights (rounding.py): needs calibration samples.
4. Per-tensor range choice by each reading layer's own output error, and bias correction (local.py):
   needs samples; the choice also needs the statistics (the candidates are the algorithms' ranges).
5. One scale shared by a Concat's inputs and output (placement.shared_scale_groups).
Asymmetric activations (uint8 with zero points, for onnxruntime / Horizon, not TensorRT) are the last
step's alternative form of every candidate, so choice and bias correction see what will be deployed.
Every step can be switched off (AccuracyOptions) so its contribution can be measured on its own.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from ..algorithms import compute_amax_many
import onnx
from onnx import numpy_helper

from .bounds import Bound, bounded_amax, tensor_bounds
from .capture import Feeds, Sessions, capture
from .graph import FreshNames, drop_unused_initializers
from .local import choose_ranges
from .placement import QdqPlan, shared_scale_groups
from .rounding import HessianSum, input_rows, round_layer, supported
from ..errors import OptionError
from .weights import (SCALE_METHODS, QParams, QuantizedWeight, asymmetric_qparams, dequantize, quantize_weight,
                      symmetric_qparams)

log = logging.getLogger(__name__)

CANDIDATE_ALGOS = ("entropy", "max", "percentile", "mse")
BIAS_MODES = ("weights", "output", "off")
WeightKey = Tuple[str, Optional[int]]


@dataclass
class AccuracyOptions:
    """Which methods the static export applies (all on by default; data-driven ones need samples)."""

    weight_scales: str = "mse"  # "max" | "mse"
    bounds: bool = True
    rounding: bool = True
    choose_ranges: bool = True
    bias_correction: str = "weights"  # "weights": E[(W - W_q) x]; "output": E[y - y_q] (input clipping too); "off"
    asymmetric: bool = False
    max_samples: int = 32  # calibration samples the data-driven steps use (the first ones): cost vs noise

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Refined:
    qparams: Dict[str, QParams]
    weights: Dict[WeightKey, QuantizedWeight]
    summary: Dict[str, Any]


def _take(batches: Sequence[Feeds], limit: int) -> List[Feeds]:
    out, count = [], 0
    for feeds in batches:
        if count >= limit:
            break
        n = len(next(iter(feeds.values())))
        keep = min(n, limit - count)
        out.append({k: np.asarray(v)[:keep] for k, v in feeds.items()})
        count += keep
    return out


def algorithm_ranges(tensors: Sequence[str], stats: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """tensor -> algorithm -> amax for the CANDIDATE_ALGOS (default options), the tensors with statistics;
    the searches run on every core (they release the GIL)."""
    known = [t for t in dict.fromkeys(tensors) if stats is not None and t in stats]
    table: Dict[str, Dict[str, float]] = {t: {} for t in known}
    for algo in CANDIDATE_ALGOS:
        for t, v in zip(known, compute_amax_many([stats[t] for t in known], algo, threads=os.cpu_count())):
            table[t][algo] = float(v)
    return table


def _candidates(tensor: str, amax: float, stats: Optional[Mapping[str, Any]], bounds: Mapping[str, Bound],
                options: AccuracyOptions, ranges: Mapping[str, Mapping[str, float]]) -> List[Optional[QParams]]:
    """amax first (kept when errors tie), then each algorithm's range (`ranges`: algorithm_ranges) and the
    op's bound, all within the bound."""
    values = [amax]
    tensor_stats = None if stats is None else stats.get(tensor)
    if options.choose_ranges and tensor_stats is not None:
        values += [ranges[tensor][a] for a in CANDIDATE_ALGOS]
        bound = bounds.get(tensor)
        if bound is not None and np.isfinite(bound.absmax):
            values.append(bound.absmax)
            values = [min(v, bound.absmax) for v in values]
    if options.asymmetric and tensor_stats is not None:
        return [asymmetric_qparams(v, tensor_stats.min, tensor_stats.max) for v in values]
    return [symmetric_qparams(v) for v in values]


def check_options(options: AccuracyOptions) -> None:
    if options.bias_correction not in BIAS_MODES:
        raise OptionError(f"bias_correction: expected one of {', '.join(BIAS_MODES)}, got {options.bias_correction!r}")
    if options.weight_scales not in SCALE_METHODS:
        raise OptionError(f"weight_scales: expected one of {', '.join(SCALE_METHODS)}, got {options.weight_scales!r}")
    if options.max_samples < 1:
        raise OptionError(f"max_samples must be >= 1, got {options.max_samples}")


def _base_qparams(tensors: Sequence[str], amax: Mapping[str, float], stats: Optional[Mapping[str, Any]],
                  asymmetric: bool) -> Dict[str, QParams]:
    out: Dict[str, QParams] = {}
    for t in tensors:
        s = None if stats is None or not asymmetric else stats.get(t)
        q = symmetric_qparams(amax[t]) if s is None else asymmetric_qparams(amax[t], s.min, s.max)
        if q is not None:
            out[t] = q
    return out


def quantized_weights(graph: onnx.GraphProto, plan: QdqPlan, method: str = AccuracyOptions.weight_scales
                      ) -> Dict[WeightKey, QuantizedWeight]:
    """The plan's weights quantised with `method` scales and nearest rounding (the data-free export)."""
    inits = {i.name: i for i in graph.initializer}
    out: Dict[WeightKey, QuantizedWeight] = {}
    for edge in plan.weights:
        key = (edge.initializer, edge.axis)
        if key not in out:
            out[key] = quantize_weight(numpy_helper.to_array(inits[edge.initializer]), edge.axis, method)
    return out


def _round(model: onnx.ModelProto, plan: QdqPlan, weights: Dict[WeightKey, QuantizedWeight],
           batches: Sequence[Feeds], origin: str, sessions: Sessions) -> int:
    """Step 3 in place on `weights`; returns how many layers kept the data-driven rounding."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    layers: Dict[WeightKey, Tuple[onnx.NodeProto, np.ndarray, str]] = {}
    for edge in plan.weights:
        node = graph.node[edge.node]
        key = (edge.initializer, edge.axis)
        w = numpy_helper.to_array(inits[edge.initializer])
        if key in layers or edge.input != 1 or not node.input[0] or node.input[0] in inits or not supported(node, w):
            continue
        layers[key] = (node, w, node.input[0])
    sums = {key: HessianSum() for key in layers}
    rng = np.random.default_rng(0)
    for values in capture(model, sorted({t for _, _, t in layers.values()}), batches, origin, sessions):
        for key, (node, w, tensor) in layers.items():
            sums[key].add(input_rows(node, values[tensor], w, rng))
    kept = 0
    for key, (node, w, _) in layers.items():
        if sums[key].h is None:
            continue
        weights[key], errors = round_layer(node, w, weights[key], sums[key].h)
        kept += errors["gptq"] < errors["nearest"]
    return kept


def _dequantized(plan: QdqPlan, weights: Mapping[WeightKey, QuantizedWeight]) -> Dict[Tuple[int, int], np.ndarray]:
    return {(e.node, e.input): dequantize(weights[(e.initializer, e.axis)]) for e in plan.weights}


def apply_bias_deltas(graph: onnx.GraphProto, deltas: Mapping[int, np.ndarray]) -> int:
    """Add each node's per-channel delta to its float bias (a new initializer); returns how many."""
    from .local import add_to_bias

    names = FreshNames(graph)
    done = sum(add_to_bias(graph, index, delta, names) for index, delta in sorted(deltas.items()))
    drop_unused_initializers(graph)  # the biases replaced by corrected copies
    return done


def refine(model: onnx.ModelProto, plan: QdqPlan, amax: Mapping[str, float], stats: Optional[Mapping[str, Any]],
           samples: Optional[Sequence[Feeds]], options: AccuracyOptions, origin: str,
           sessions: Optional[Sessions] = None, progress: Optional[Callable[[int, int], None]] = None,
           ranges: Optional[Mapping[str, Mapping[str, float]]] = None) -> Refined:
    """Steps 1-5 on a prepared model (biases changed in place); the activation and weight quantisation.
    The data-driven steps run the model on `samples` through `sessions` (capture.Sessions); progress(batches
    done, batches) follows the per-tensor choice; ranges: algorithm_ranges of the plan's tensors when the
    caller has them already."""
    check_options(options)
    graph = model.graph
    summary: Dict[str, Any] = {"options": options.to_dict()}
    bounds = tensor_bounds(graph) if options.bounds else {}
    amax, summary["bound_changes"] = bounded_amax(amax, bounds, stats)
    weights = quantized_weights(graph, plan, options.weight_scales)
    tensors = plan.activation_tensors
    qparams = _base_qparams(tensors, amax, stats, options.asymmetric)
    batches = _take(samples, options.max_samples) if samples else []
    if batches and sessions is None:
        raise OptionError("calibration samples need a way to run the model: pass sessions "
                          "(ptqengine.collect.model_sessions()), or use ptqengine.api.quantize")
    if batches and options.rounding:
        summary["rounded_layers"] = _round(model, plan, weights, batches, origin, sessions)
    if batches and (options.choose_ranges or options.bias_correction != "off"):
        ranges = ranges if ranges is not None else algorithm_ranges(tensors, stats) if options.choose_ranges else {}
        candidates = {t: _candidates(t, amax[t], stats, bounds, options, ranges) for t in tensors}
        local = choose_ranges(model, plan, candidates, _dequantized(plan, weights), batches, origin, sessions,
                              progress)
        qparams.update(local.qparams)
        summary["ranges_changed"] = sum(1 for c in local.chosen.values() if c != 0)
        if options.bias_correction != "off":
            deltas = local.weight_bias_delta if options.bias_correction == "weights" else local.bias_delta
            summary["bias_corrected"] = apply_bias_deltas(graph, deltas)
    if not options.asymmetric:
        groups = shared_scale_groups(graph, plan)
        for group in groups:
            shared = max((qparams[t] for t in group if t in qparams), key=lambda q: q.scale, default=None)
            qparams.update({t: shared for t in group if shared is not None and t in qparams})
        summary["shared_scale_groups"] = len(groups)
    summary["samples"] = sum(len(next(iter(b.values()))) for b in batches)
    return Refined(qparams, weights, summary)
