"""The TensorRT cache (issue 20): the default per-tensor choice, its simulation, constant entries.

Expected values come from NumPy written here from the documented semantics (TensorRT's implicit int8:
activations per tensor at the cache's scale, weights per output channel at max|w| / 127, int32-exact
accumulation; round half to even, saturate to [-128, 127]), not from the code under test.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptqengine.model import constant_ranges
from ptqengine.qdq.trt_implicit import simulate_cache
from tests.conftest import save_model


def fake_quant(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear, int8, zero point 0 (ONNX: round half to even, saturate)."""
    return np.clip(np.rint(x / scale), -128, 127) * scale


def weight_fake_quant(w: np.ndarray) -> np.ndarray:
    """Per output channel (axis 0), max|w| / 127: what TensorRT does with a cache's float weights."""
    scale = (np.abs(w).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
    return fake_quant(w, scale)


def gemm_silu_gemm(path, rng) -> dict:
    """x [N, 16] -> Gemm(W1, transB) -> SiLU (Sigmoid * x) -> Gemm(W2, transB) -> y; returns the weights."""
    w1 = rng.standard_normal((24, 16)).astype(np.float32)
    w2 = (rng.standard_normal((8, 24)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["sig"]),
             helper.make_node("Mul", ["h", "sig"], ["silu"]),
             helper.make_node("Gemm", ["silu", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    save_model(graph, path)
    return {"w1": w1, "w2": w2}


def heavy_tailed(rng, n: int) -> np.ndarray:
    """Inputs whose SiLU outputs have a long tail, where the algorithms' ranges differ widely."""
    return (rng.standard_normal((n, 16)) * np.exp(rng.standard_normal((n, 1)))).astype(np.float32)


def test_simulated_cache_computes_tensorrt_implicit_int8(tmp_path):
    rng = np.random.default_rng(0)
    weights = gemm_silu_gemm(tmp_path / "mlp.onnx", rng)
    amax = {"x": 3.5, "silu": 2.25, "h": 7.0}  # h: read by no layer TensorRT quantises (fused into the SiLU)
    simulated = simulate_cache(tmp_path / "mlp.onnx", amax)
    x = heavy_tailed(rng, 64)
    so = __import__("onnxruntime").SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    session = __import__("onnxruntime").InferenceSession(simulated.model.SerializeToString(), so,
                                                         providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]

    s = lambda a: np.float32(a / 127.0)  # noqa: E731
    h = fake_quant(x, s(amax["x"])) @ weight_fake_quant(weights["w1"]).T
    silu = h / (1.0 + np.exp(-h))
    want = fake_quant(silu, s(amax["silu"])) @ weight_fake_quant(weights["w2"]).T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert simulated.report.activation_qdq == 2


def test_a_tensor_missing_from_the_cache_stays_float(tmp_path):
    rng = np.random.default_rng(1)
    weights = gemm_silu_gemm(tmp_path / "mlp.onnx", rng)
    simulated = simulate_cache(tmp_path / "mlp.onnx", {"x": 3.5})
    assert [t for t, _ in simulated.report.skipped] == ["silu"]
    x = heavy_tailed(rng, 8)
    got = __import__("onnxruntime").InferenceSession(simulated.model.SerializeToString(),
                                                     providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    h = fake_quant(x, np.float32(3.5 / 127)) @ weight_fake_quant(weights["w1"]).T
    np.testing.assert_allclose(got, (h / (1 + np.exp(-h))) @ weight_fake_quant(weights["w2"]).T, rtol=1e-4, atol=1e-4)


def test_default_cache_takes_the_candidate_with_least_layer_output_error(tmp_path, cli):
    """The default cache's range for `silu` is the candidate whose Gemm output error, computed here in NumPy
    on the same 32 samples, is least; `--algo entropy` keeps exactly the entropy range."""
    from ptqengine import calibrate
    from ptqengine.algorithms import compute_amax

    rng = np.random.default_rng(2)
    model = tmp_path / "mlp.onnx"
    weights = gemm_silu_gemm(model, rng)
    x = heavy_tailed(rng, 32)
    np.save(tmp_path / "x.npy", x)
    result = calibrate(model, [x], algo="choice")
    stats = result.stats.tensors["silu"]
    candidates = {a: float(compute_amax(stats, a)) for a in ("entropy", "max", "percentile", "mse")}
    assert len({round(v, 4) for v in candidates.values()}) >= 3, candidates  # the choice is a real one

    h = x @ weights["w1"].T
    silu = h / (1.0 + np.exp(-h))
    wq = weight_fake_quant(weights["w2"])
    reference = silu @ weights["w2"].T
    error = {a: float(((reference - fake_quant(silu, np.float32(v / 127.0)) @ wq.T) ** 2).sum())
             for a, v in candidates.items()}
    best = min(error, key=error.get)
    assert result.amax["silu"] == pytest.approx(candidates[best], rel=1e-6), (error, result.amax["silu"])
    assert result.algo == "choice" and sum(result.algo_options["winners"].values()) == 2

    out = cli("calibrate", model, "--data", tmp_path / "x.npy", "-o", tmp_path / "c.cache",
              "--scales-json", tmp_path / "c.json")
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "c.json").read_text())["algorithm"]["name"] == "choice"
    entropy = cli("calibrate", model, "--data", tmp_path / "x.npy", "--algo", "entropy", "-o", tmp_path / "e.cache")
    assert entropy.exit_code == 0, entropy.output
    lines = dict(line.split(": ") for line in (tmp_path / "e.cache").read_text().splitlines()[1:])
    assert lines["silu"] == struct.pack("!f", candidates["entropy"] / 127.0).hex()


def constants_model(path) -> None:
    """x -> Mul(Constant c) -> Pad(constant value p) -> Conv(w) -> Add(initializer b, int64 shape unused)."""
    c = np.array([[[[0.5]], [[-2.0]], [[1.25]]]], np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c_value")),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(3, np.float32))),
             helper.make_node("Constant", [], ["pad_value"], value=numpy_helper.from_array(np.array(-0.75, np.float32))),
             helper.make_node("Mul", ["x", "c"], ["scaled"]),
             helper.make_node("Mul", ["scaled", "zero_b"], ["unused"]),
             helper.make_node("Pad", ["scaled", "pads", "pad_value"], ["padded"]),
             helper.make_node("Conv", ["padded", "w"], ["conv"]),
             helper.make_node("Add", ["conv", "bias"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.full((4, 3, 3, 3), 9.0, np.float32), "w"),
             numpy_helper.from_array(np.array([[[[0.1]], [[-0.4]], [[0.3]], [[0.2]]]], np.float32), "bias"),
             numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32), "zero_b")]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("unused", TensorProto.FLOAT, None)], initializer=inits)
    save_model(graph, path)


def test_constant_entries_are_max_abs_of_their_values(tmp_path, cli):
    constants_model(tmp_path / "k.onnx")
    found = constant_ranges(onnx.load(str(tmp_path / "k.onnx")))
    # Conv weights (TensorRT scales them itself), int64 pads and all-zero constants get no entry.
    assert found == pytest.approx({"c": 2.0, "pad_value": 0.75, "bias": 0.4}, rel=1e-6)
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((4, 3, 6, 6)).astype(np.float32))
    out = cli("calibrate", tmp_path / "k.onnx", "--data", tmp_path / "x.npy", "--algo", "max", "-o", tmp_path / "k.cache")
    assert out.exit_code == 0, out.output
    lines = dict(line.split(": ") for line in (tmp_path / "k.cache").read_text().splitlines()[1:])
    for name, amax in {"c": 2.0, "pad_value": 0.75, "bias": np.float32(0.4)}.items():
        assert lines[name] == struct.pack("!f", amax / 127.0).hex()
    assert "w" not in lines and "pads" not in lines and "zero_b" not in lines
    assert "and 3 constants from their values" in out.stdout  # the cache's entries = tensors + constants
    warnings = [line for line in out.output.splitlines() if line.lower().startswith("warning")]
    assert warnings and not any(f"'{name}'" in w for w in warnings for name in found), warnings  # only 'unused'



def test_evaluate_reads_a_cache_and_ranks_two_caches(tmp_path, cli):
    rng = np.random.default_rng(4)
    gemm_silu_gemm(tmp_path / "mlp.onnx", rng)
    np.save(tmp_path / "x.npy", heavy_tailed(rng, 32))
    np.save(tmp_path / "val.npy", heavy_tailed(rng, 64))
    for name, extra in (("tight", ["--algo", "percentile", "--percentile", "90"]), ("max", ["--algo", "max"])):
        out = cli("calibrate", tmp_path / "mlp.onnx", "--data", tmp_path / "x.npy", *extra, "-o", tmp_path / f"{name}.cache")
        assert out.exit_code == 0, out.output
    reports = {}
    for name in ("tight", "max"):
        out = cli("evaluate", tmp_path / "mlp.onnx", tmp_path / f"{name}.cache", "--data", tmp_path / "val.npy",
                  "--json", tmp_path / f"{name}.json")
        assert out.exit_code == 0, out.output
        assert "TensorRT cache, simulated" in out.output and "worst case" in out.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["max"]["cache"]["quantized_tensors"] == 2
    # Clipping the heavy tail at the 90th percentile costs more than max's coarser steps on these inputs.
    assert reports["tight"]["outputs"][0]["sqnr_db"] < reports["max"]["outputs"][0]["sqnr_db"]


def test_evaluate_refuses_a_cache_of_another_model_and_cpu_kernels(tmp_path, cli):
    rng = np.random.default_rng(5)
    gemm_silu_gemm(tmp_path / "mlp.onnx", rng)
    np.save(tmp_path / "val.npy", heavy_tailed(rng, 8))
    (tmp_path / "other.cache").write_text("TRT-100300-EntropyCalibration2\nnot_here: 3c010204\n")
    out = cli("evaluate", tmp_path / "mlp.onnx", tmp_path / "other.cache", "--data", tmp_path / "val.npy")
    assert out.exit_code == 2 and "another model" in out.output, out.output
    (tmp_path / "ok.cache").write_text("TRT-100300-EntropyCalibration2\nx: 3c010204\n")
    out = cli("evaluate", tmp_path / "mlp.onnx", tmp_path / "ok.cache", "--data", tmp_path / "val.npy", "--cpu-kernels")
    assert out.exit_code == 2 and "TensorRT cache" in out.output, out.output


@pytest.mark.parametrize("bad", [{"c": 2.0}, [["c", -1.0]], [["c", float("inf")]], [["c", True]], [[3, 1.0]], [["c"]]])
def test_statistics_with_bad_constant_entries_are_refused_in_one_line(tmp_path, cli, bad):
    from ptqengine import TensorStats, save_stats

    stats = TensorStats(128).update(np.linspace(-1, 1, 100, dtype=np.float32))
    save_stats(tmp_path / "s.ptqs", {"x": stats}, metadata={"constant_amax": bad})
    out = cli("export", tmp_path / "s.ptqs", "-o", tmp_path / "c.cache")
    assert out.exit_code == 2 and "s.ptqs" in out.output and "constant_amax" in out.output, out.output  # the key named
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "c.cache").exists()
