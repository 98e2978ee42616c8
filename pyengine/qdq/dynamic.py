"""Dynamic mode: int8 per-channel weights, activations quantised at run time, no calibration data.

For sequence models (LSTM, transformers) whose activation ranges move with the input. The graph is
prepared here (Constant-held weights to initializers, weight plumbing folded so that weights reach the
ops as initializers, in subgraphs too) and then handed to onnxruntime's documented `quantize_dynamic`
(https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, "Dynamic quantization")
with per_channel=True, int8 weights, and subgraph quantisation on (extra option EnableSubgraph, listed in
quantize_dynamic's docstring). It writes onnxruntime's integer ops: DynamicQuantizeLinear + MatMulInteger
for MatMul, DynamicQuantizeLSTM for LSTM (com.microsoft domain), Attention where present.

Weights are quantised to 7 bits (onnxruntime's `reduce_range`): its u8 x s8 kernels on x86 CPUs without
VNNI add pairs of products in 16 bits, which saturates with full-range weights (onnxruntime's docs
recommend reduce_range there); a dynamic model is a file that may run on any CPU, so it is made safe for
all of them at the cost of one bit of weight precision.

Conv is not quantised here by default: onnxruntime turns it into ConvInteger, which on the models tried
(silero-vad's STFT front end) cost far more accuracy than it saved. These are onnxruntime ops: this mode
targets onnxruntime, not TensorRT (TensorRT takes the static Q/DQ model).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import onnx

from ..errors import ModelError
from .graph import (all_graphs, constants_to_initializers, drop_unused_initializers, fold_weight_plumbing,
                    topological_sort)

log = logging.getLogger(__name__)

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "Attention")


def prepare_dynamic(model: onnx.ModelProto) -> Dict[str, int]:
    """In place: Constant weights to initializers, shape-only weight plumbing folded, unused ones dropped."""
    moved = constants_to_initializers(model)
    folded = fold_weight_plumbing(model)
    drop_unused_initializers(model.graph)  # weights now read only through their folded copies
    return {"constants_moved": moved, "folded": folded}


def quantize_dynamic_model(model: onnx.ModelProto, *, per_channel: bool = True,
                           op_types: Sequence[str] = DYNAMIC_OP_TYPES, exclude_nodes: Sequence[str] = (),
                           origin: str = "<model>") -> onnx.ModelProto:
    """The dynamically quantised model (a new proto); the input is not modified."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    counts = prepare_dynamic(prepared)
    log.info("%s: %d Constant node(s) to initializers, %d weight op(s) folded", origin,
             counts["constants_moved"], counts["folded"])
    with tempfile.TemporaryDirectory(prefix="ptq-dynamic-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(prepared, str(src))
        try:
            with _onnxruntime_root_logs(origin):
                quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types), per_channel=per_channel,
                                 reduce_range=True, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(exclude_nodes) or None,
                                 extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{origin}: onnxruntime's dynamic quantisation failed: {first}") from None
        result = onnx.load(str(dst))
    topological_sort(result.graph)  # onnxruntime's subgraph pass can leave an If after its readers
    _declare_domains(result)
    return result


# onnxruntime's quantize_dynamic advises its own pre-processing script on every call; the graph is
# prepared here instead (prepare_dynamic), so the advice does not apply.
_ORT_ADVICE = "Please consider to run pre-processing before quantization"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _onnxruntime_root_logs(origin: str) -> Iterator[None]:
    """onnxruntime.quantization logs on the root logger (logging.warning), which would also install a
    stderr handler on the caller's root logger for good: hold its records meanwhile and pass on, through
    our logger, those that say something about this model."""
    root = logging.getLogger()
    collect = _Collect()
    root.addHandler(collect)  # a handler present: logging.warning does not call basicConfig
    try:
        yield
    finally:
        root.removeHandler(collect)
        for record in collect.records:
            message = record.getMessage()
            if record.levelno >= logging.WARNING and _ORT_ADVICE not in message:
                log.warning("%s: onnxruntime: %s", origin, message.strip())


def _declare_domains(model: onnx.ModelProto) -> None:
    """Add opset imports for domains used only inside subgraphs (onnxruntime's pass does not declare them)."""
    declared = {entry.domain for entry in model.opset_import}
    used = sorted({n.domain for g in all_graphs(model.graph) for n in g.node if n.domain not in ("", "ai.onnx")})
    for domain in used:
        if domain not in declared:
            model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
