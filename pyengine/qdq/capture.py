"""FP32 activations of a prepared graph on calibration batches, for the data-driven weight and range methods.

The Q/DQ export's data-driven steps (rounding.py, local.py) need, batch by batch, the float inputs of the
layers they quantise. The prepared graph (BatchNormalization folded, names kept) runs in onnxruntime with
those tensors added as graph outputs (graph outputs survive every fusion); nothing is kept beyond one
batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper


Feeds = Mapping[str, np.ndarray]


Sessions = Callable[[onnx.ModelProto, str, bool], Any]
"""How the export runs a model on calibration data: (model, origin, unfused_qdq) -> a runner with
`get_inputs()` and `run(outputs, feeds)` as an onnxruntime session has them, whose failures are DataErrors
naming origin. The caller supplies it (ptqengine.collect.model_sessions: the collection core's runner, for a
device and thread count): the export builds and runs no session itself, and unfused_qdq=True keeps Q/DQ as
the float ops TensorRT computes."""


def capture(model: onnx.ModelProto, tensors: Sequence[str], batches: Sequence[Feeds], origin: str,
            sessions: Sessions) -> Iterator[Dict[str, np.ndarray]]:
    """Per batch: tensor -> float value (graph inputs are passed through from the feeds)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inputs = {i.name for i in copy.graph.input}
    existing = {o.name for o in copy.graph.output}
    exposed = [t for t in dict.fromkeys(tensors) if t not in inputs]
    for name in exposed:
        if name not in existing:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    runner = sessions(copy, origin, False)
    wanted = [n.name for n in runner.get_inputs()]
    for feeds in batches:
        values = runner.run(exposed, {n: feeds[n] for n in wanted})  # a DataError naming origin if it fails
        out = {n: np.asarray(feeds[n]) for n in tensors if n in inputs}
        out.update(zip(exposed, values))
        yield out
