"""FP32 activations of a prepared graph on calibration batches, for the data-driven weight and range methods.

The Q/DQ export's data-driven steps (rounding.py, local.py) need, batch by batch, the float inputs of the
layers they quantise. The prepared graph (BatchNormalization folded, names kept) runs in onnxruntime with
those tensors added as graph outputs; nothing is kept beyond one batch. Graph optimisations are left at
the basic level: fusions that would remove a tensor now a graph output are not applied, and the float
values are those of the deployed FP32 model.
"""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import DataError, ModelError

Feeds = Mapping[str, np.ndarray]


def session_options(threads: int = 0, unfused_qdq: bool = False):
    """onnxruntime options for the export's own runs; unfused_qdq keeps Q/DQ as separate float ops, as
    TensorRT computes them (onnxruntime's fused int8 CPU kernels are not a quantisation oracle)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if unfused_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return so


def load_session(model: onnx.ModelProto, origin: str, threads: int = 0, unfused_qdq: bool = False):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.SerializeToString(), session_options(threads, unfused_qdq),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{origin}: onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def capture(model: onnx.ModelProto, tensors: Sequence[str], batches: Sequence[Feeds], origin: str,
            threads: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Per batch: tensor -> float value (graph inputs are passed through from the feeds)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inputs = {i.name for i in copy.graph.input}
    existing = {o.name for o in copy.graph.output}
    exposed = [t for t in dict.fromkeys(tensors) if t not in inputs]
    for name in exposed:
        if name not in existing:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = load_session(copy, origin, threads)
    wanted = [n.name for n in session.get_inputs()]
    for feeds in batches:
        try:
            values = session.run(exposed, {n: feeds[n] for n in wanted})
        except Exception as exc:
            raise DataError(f"{origin}: onnxruntime failed on a calibration batch: {str(exc).splitlines()[0]}") from None
        out = {n: np.asarray(feeds[n]) for n in tensors if n in inputs}
        out.update(zip(exposed, values))
        yield out
