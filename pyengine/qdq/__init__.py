"""Q/DQ ONNX export: one calibration, a model for TensorRT explicit quantization and onnxruntime.

TensorRT 11 removed implicit quantization; INT8 there means QuantizeLinear / DequantizeLinear nodes in
the ONNX model (TensorRT developer guide, "Explicit Quantization":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
The same model runs in onnxruntime's CPU provider, which is how it is checked here.

Static mode (the default): prepare the graph (graph.py: opset >= 13, Constant weights as initializers,
BatchNormalization folded), place Q/DQ by the rules in placement.py, decide the quantisation with the
accuracy methods (accuracy.py: bound-aware ranges, weight-error scales per output channel, and with
calibration `samples` data-driven rounding, per-tensor ranges by each layer's own output error, bias
correction), insert them (insert.py), optionally keep named nodes in FP16 (fp16.py), check with
onnx.checker, write atomically.
Dynamic mode: weights int8 per channel, activations quantised at run time by onnxruntime (dynamic.py).

    result = quantize_model("model.onnx", "model.int8.onnx", calibration=calibrate("model.onnx", "images/"),
                            samples=[{"x": batch} for batch in batches])  # samples: optional, better with them
"""
from __future__ import annotations

import difflib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import onnx

from .._version import __version__
from ..algorithms import CHOICE
from ..atomic import write_bytes_atomic
from ..errors import ModelError, OptionError
from ..model import find_activations, load_model
from .dynamic import DYNAMIC_OP_TYPES, quantize_dynamic_model
from .fp16 import apply_fp16_fallback
from .graph import default_opset, prepare
from .accuracy import AccuracyOptions, refine
from .capture import Feeds, Sessions
from .insert import insert_qdq
from .placement import excluded_indices, matches, node_label, plan_qdq

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
MODES = ("static", "dynamic")
METADATA_KEY = "ptqengine.qdq"
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialised message

__all__ = ["MODES", "AccuracyOptions", "QuantizeReport", "QuantizeResult", "Sessions", "quantize_model", "write_model"]


@dataclass
class QuantizeReport:
    mode: str
    per_channel: bool
    algo: Optional[str] = None
    source_opset: int = 0
    opset: int = 0
    activation_qdq: int = 0  # tensors given a Q/DQ pair
    weight_dq: int = 0  # weights stored as int8 + DequantizeLinear
    folded_bn: int = 0
    excluded_nodes: List[str] = field(default_factory=list)
    fp16_nodes: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (tensor, reason)
    notes: List[str] = field(default_factory=list)
    accuracy: Dict[str, Any] = field(default_factory=dict)  # what the accuracy methods did (accuracy.py)
    output_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class QuantizeResult:
    model: onnx.ModelProto
    report: QuantizeReport


def _amax_of(calibration: Any) -> Tuple[Dict[str, float], Optional[str]]:
    """amax per tensor and the algorithm name, from a CalibrationResult or a plain mapping."""
    if calibration is None:
        raise OptionError("static mode needs activation ranges: calibrate first (--data) or give saved "
                          "statistics (--stats), or use --mode dynamic")
    amax = getattr(calibration, "amax", calibration)
    if not isinstance(amax, Mapping):
        raise OptionError(f"calibration: expected a CalibrationResult or a mapping of tensor -> amax, "
                          f"got {type(calibration).__name__}")
    return {str(k): float(v) for k, v in amax.items()}, getattr(calibration, "algo", None)


def _load(model: Union[PathLike, onnx.ModelProto]) -> Tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the caller's proto stays untouched
        return copy, "<model>"
    return load_model(model), str(model)


def _check_fp16_names(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    labels = [node_label(n, i) for i, n in enumerate(graph.node)]
    known = set(labels)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, labels, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise OptionError(f"--fp16-fallback: no node named {name!r} in the model{hint}")


def _name_nodes(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Give nameless nodes that are referred to by their label that label as name (stable across edits)."""
    wanted = set(names)
    for i, node in enumerate(graph.node):
        if not node.name and node_label(node, i) in wanted:
            node.name = node_label(node, i)


def _exclusion_notes(graph: onnx.GraphProto, exclude: Sequence[str], op_types: Sequence[str]) -> List[str]:
    notes = []
    labels = [node_label(n, i) for i, n in enumerate(graph.node)]
    for pattern in exclude:
        if not any(matches(label, [pattern]) for label in labels):
            notes.append(f"--exclude {pattern!r} matches no node")
    present = {n.op_type for n in graph.node}
    for op in op_types:
        if op not in present:
            notes.append(f"--exclude-op-types: the model has no {op} node")
    return notes


def _stamp(model: onnx.ModelProto, settings: Mapping[str, Any]) -> None:
    """Record how the model was made in its metadata (no time stamps: same inputs, same bytes)."""
    for prop in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps({"tool_version": __version__, **settings}, sort_keys=True)


def _static(proto: onnx.ModelProto, origin: str, amax: Mapping[str, float], report: QuantizeReport,
            exclude: Sequence[str], exclude_op_types: Sequence[str], fp16_fallback: Sequence[str],
            stats: Optional[Mapping[str, Any]], samples: Optional[Sequence[Feeds]],
            options: AccuracyOptions, sessions: Optional[Sessions]) -> onnx.ModelProto:
    bn_before = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    prepared = prepare(proto, origin)
    report.folded_bn = bn_before - sum(n.op_type == "BatchNormalization" for n in prepared.graph.node)
    graph = prepared.graph
    _check_fp16_names(graph, fp16_fallback)
    report.notes += _exclusion_notes(graph, exclude, exclude_op_types)
    if fp16_fallback:
        _name_nodes(graph, fp16_fallback)
        float_types = find_activations(prepared, origin)
        indices = excluded_indices(graph, (), (), fp16_fallback)
        report.fp16_nodes = apply_fp16_fallback(prepared, sorted(indices), float_types)
    plan = plan_qdq(graph, amax, per_channel=report.per_channel, exclude=exclude,
                    exclude_op_types=exclude_op_types, fp16_nodes=fp16_fallback)
    if plan.skipped and not plan.activations:
        raise OptionError(f"{origin}: none of the {len(plan.skipped)} tensors to quantize has a calibrated range "
                          f"(first: {plan.skipped[0][0]!r}); were the statistics taken on another model?")
    usable = {t: amax[t] for t in plan.activation_tensors}
    refined = refine(prepared, plan, usable, stats, samples, options, origin, sessions)
    report.accuracy = refined.summary
    if options.choose_ranges and "ranges_changed" in refined.summary:
        report.algo = CHOICE  # each tensor's range was chosen among the algorithms', whatever the base ranges
    counts = insert_qdq(prepared, plan, amax, qparams=refined.qparams, weights=refined.weights)
    report.activation_qdq, report.weight_dq = counts["activation_qdq"], counts["weight_dq"]
    report.excluded_nodes, report.skipped = plan.excluded_nodes, plan.skipped
    if plan.skipped:
        log.warning("%d tensor(s) left without Q/DQ (no usable range), e.g. %s: %s", len(plan.skipped),
                    plan.skipped[0][0], plan.skipped[0][1])
    return prepared


def quantize_model(model: Union[PathLike, onnx.ModelProto], output: Optional[PathLike] = None, *,
                   calibration: Any = None, mode: str = "static", per_channel: bool = True,
                   exclude: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
                   fp16_fallback: Sequence[str] = (), samples: Optional[Sequence[Feeds]] = None,
                   accuracy: Optional[AccuracyOptions] = None, sessions: Optional[Sessions] = None) -> QuantizeResult:
    """Quantise an FP32 ONNX model to int8 and (when `output` is given) write it.

    calibration: a `CalibrationResult` (ptqengine.calibrate / result_from_stats) or a mapping tensor -> amax,
        taken on this same model (static mode; ignored in dynamic mode).
    exclude: fnmatch patterns on node names (a nameless node: its first output); exclude_op_types: op types;
    fp16_fallback: exact node names to run in float16 (static mode).
    samples: calibration batches (feed dicts) for the data-driven accuracy methods (rounding, per-tensor range
        choice, bias correction), run through `sessions` (ptqengine.collect.model_sessions()); without samples
        only the data-free ones run. accuracy: which methods run (AccuracyOptions(); all on). Raises PtqError
        subclasses for user errors. ptqengine.api.quantize does all of it from --data.
    """
    start = time.perf_counter()
    if mode not in MODES:
        raise OptionError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    proto, origin = _load(model)
    input_ok = not _fails_checker(proto)  # before any change: to say where a checker failure comes from
    report = QuantizeReport(mode=mode, per_channel=per_channel, source_opset=default_opset(proto))
    if mode == "static":
        amax, report.algo = _amax_of(calibration)
        stats = getattr(getattr(calibration, "stats", None), "tensors", None)
        result = _static(proto, origin, amax, report, exclude, exclude_op_types, fp16_fallback, stats, samples,
                         accuracy or AccuracyOptions(), sessions)
    else:
        if fp16_fallback:
            raise OptionError("--fp16-fallback applies to --mode static only (dynamic mode targets onnxruntime)")
        if calibration is not None:
            report.notes.append("dynamic mode ignores the calibration ranges")
        result = _dynamic(proto, origin, report, exclude, exclude_op_types)
    report.opset = default_opset(result)
    _stamp(result, {"mode": mode, "per_channel": per_channel, "algo": report.algo, "exclude": list(exclude),
                    "exclude_op_types": list(exclude_op_types), "fp16_fallback": list(fp16_fallback),
                    "accuracy": (accuracy or AccuracyOptions()).to_dict() if mode == "static" else None})
    _check(result, origin, input_passed_checker=input_ok)
    data = result.SerializeToString()
    report.output_bytes = len(data)
    if output is not None:
        write_bytes_atomic(output, data)
    report.seconds = time.perf_counter() - start
    return QuantizeResult(result, report)


def _dynamic(proto: onnx.ModelProto, origin: str, report: QuantizeReport, exclude: Sequence[str],
             exclude_op_types: Sequence[str]) -> onnx.ModelProto:
    graph = proto.graph
    report.notes += _exclusion_notes(graph, exclude, exclude_op_types)
    excluded = excluded_indices(graph, exclude, (), ())
    report.excluded_nodes = [node_label(graph.node[i], i) for i in sorted(excluded)]
    _name_nodes(graph, report.excluded_nodes)  # onnxruntime matches nodes by name
    op_types = [op for op in DYNAMIC_OP_TYPES if op not in set(exclude_op_types)]
    result = quantize_dynamic_model(proto, per_channel=report.per_channel, op_types=op_types,
                                    exclude_nodes=report.excluded_nodes, origin=origin)
    report.weight_dq = sum(1 for i in result.graph.initializer if i.data_type == onnx.TensorProto.INT8)
    return result


def _check(model: onnx.ModelProto, origin: str, input_passed_checker: bool = True) -> None:
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise ModelError(f"{origin}: the quantized model exceeds protobuf's 2 GB limit for one file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).splitlines()[0]
        if not input_passed_checker:
            # Say where the problem comes from: the input, not the quantisation.
            raise ModelError(f"{origin}: the input model already fails onnx.checker ({first}); "
                             "the output must pass it, so fix the input model first") from None
        raise ModelError(f"{origin}: the quantized model fails onnx.checker: {first}") from None


def _fails_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return True
    return False


def write_model(result: QuantizeResult, path: PathLike) -> None:
    """Write a quantised model (atomically)."""
    write_bytes_atomic(path, result.model.SerializeToString())
