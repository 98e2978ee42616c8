"""Scale-table formats: TensorRT cache, ptqengine scales JSON, onnxruntime calibration.json, detection."""
import json
import math
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqengine import StatsBundle, TensorStats, save_stats
from ptqengine.errors import FormatError, OptionError, PtqError
from ptqengine.formats import (KIND_ORT_JSON, KIND_SCALES_JSON, KIND_TENSORRT, read_ort_calibration_json,
                               read_scale_table, read_scales_json, read_trt_cache, write_scales_json,
                               write_trt_cache)
from ptqengine.formats.trt_cache import (LARGEST_SCALE, SMALLEST_SCALE, format_trt_cache, parse_trt_cache,
                                         trt_version_code, trt_version_string)


def float32(x: float) -> float:
    return struct.unpack("!f", struct.pack("!f", x))[0]


# --- TensorRT version codes -------------------------------------------------------------------------------

@pytest.mark.parametrize("version, code", [("8.6.1", 8601), ("10.3.0", 100300), ("10.3", 100300),
                                           ("7.0.0", 7000), ("8.5", 8500), ("10.13.2", 101302),
                                           ("8.6.1.6", 8601)])
def test_version_codes(version, code):
    assert trt_version_code(version) == code
    assert trt_version_code(trt_version_string(code)) == code


@pytest.mark.parametrize("version, words", [("9.0", "TensorRT 9"), ("9.2.0", "TensorRT 9"),
                                            ("11.0", "Q/DQ"), ("12.1.0", "Q/DQ"), ("ten", "--trt-version"),
                                            ("10..3", "--trt-version"), ("", "--trt-version"),
                                            ("8.10.0", "8.10.0"), ("4.0", "too old")])
def test_bad_versions_rejected(version, words):
    with pytest.raises(OptionError) as err:
        trt_version_code(version)
    assert words in str(err.value) and "\n" not in str(err.value)


# --- TensorRT cache writer ----------------------------------------------------------------------------------

def test_cache_bytes_are_the_documented_format(tmp_path):
    path = tmp_path / "calibration.cache"
    warnings = write_trt_cache(path, {"input": 1.0, "conv1": 127.0, "relu": 2.5}, version="8.6.1")
    assert warnings == []
    data = path.read_bytes()
    assert data == (b"TRT-8601-EntropyCalibration2\n"
                    b"input: 3c010204\n"  # 1/127, the value from NVIDIA's documentation
                    b"conv1: 3f800000\n"  # scale exactly 1.0
                    b"relu: 3ca14285\n")  # 2.5/127 = (1 + 0x214285 / 2^23) * 2^(0x79 - 127), by hand


def test_cache_header_follows_version_and_calibrator(tmp_path):
    text, _ = format_trt_cache({"x": 1.0}, version="10.3", calibrator="minmax")
    assert text.splitlines()[0] == "TRT-100300-MinMaxCalibration"
    text, _ = format_trt_cache({"x": 1.0})
    assert text.splitlines()[0] == "TRT-100300-EntropyCalibration2"
    with pytest.raises(OptionError, match="--trt-calibrator"):
        format_trt_cache({"x": 1.0}, calibrator="legacy")
    with pytest.raises(OptionError, match="TensorRT 9"):
        write_trt_cache(tmp_path / "c.cache", {"x": 1.0}, version="9.0")
    assert not (tmp_path / "c.cache").exists()


def test_cache_keeps_given_order_and_is_deterministic(tmp_path):
    amax = {f"t{i}": float(i + 1) for i in (5, 2, 9, 0)}
    a, b = tmp_path / "a.cache", tmp_path / "b.cache"
    write_trt_cache(a, amax)
    write_trt_cache(b, dict(amax))
    assert a.read_bytes() == b.read_bytes()
    assert [line.split(":")[0] for line in a.read_text().splitlines()[1:]] == list(amax)
    assert b"\r" not in a.read_bytes() and a.read_bytes().endswith(b"\n")


def test_small_scales_keep_eight_hex_digits():
    text, _ = format_trt_cache({"tiny": 1e-36})
    digits = text.splitlines()[1].split(": ")[1]
    assert len(digits) == 8 and digits.startswith("0")


@pytest.mark.parametrize("value", [0.0, math.nan])
def test_zero_and_nan_amax_get_smallest_scale_and_a_warning(value):
    text, warnings = format_trt_cache({"ok": 1.0, "dead": value})
    assert text.splitlines()[2] == "dead: 00800000"
    assert SMALLEST_SCALE == float(np.finfo(np.float32).tiny)  # 0x00800000, the smallest normal float32
    assert len(warnings) == 1 and "'dead'" in warnings[0]


def test_infinite_amax_saturates_with_a_warning():
    text, warnings = format_trt_cache({"big": math.inf})
    assert text.splitlines()[1] == "big: 7f7fffff"
    assert LARGEST_SCALE == float(np.finfo(np.float32).max)  # 0x7f7fffff
    assert "'big'" in warnings[0]


def test_one_warning_per_reason_however_many_tensors():
    """An all-NaN input leaves every tensor without a range: one line, not one per tensor."""
    amax = {**{f"t{i}": math.nan for i in range(100)}, "big": math.inf, "tiny": 1e-40, "ok": 1.0}
    text, warnings = format_trt_cache(amax)
    assert len(text.splitlines()) == 1 + len(amax)
    assert len(warnings) == 3
    assert warnings[0] == ("100 tensor(s) with amax 0 or NaN (no finite non-zero values seen) ('t0', 't1', 't2', "
                           "'t3', 't4' and 95 more): wrote the smallest positive scale")
    assert "1 tensor(s) with a scale above float32's range" in warnings[1] and "('big')" in warnings[1]
    assert "1 tensor(s) with a scale below float32's normal range" in warnings[2] and "('tiny')" in warnings[2]


def test_negative_amax_and_unwritable_names_are_errors():
    with pytest.raises(PtqError, match="'neg'"):
        format_trt_cache({"neg": -1.0})
    with pytest.raises(PtqError, match="line break"):
        format_trt_cache({"a\nb": 1.0})


def test_colon_names_are_written_and_reported(tmp_path):
    path = tmp_path / "c.cache"
    warnings = write_trt_cache(path, {"StatefulPartitionedCall:0": 1.0, "plain": 2.0, "a: b": 3.0})
    assert len(warnings) == 1
    assert "'StatefulPartitionedCall:0'" in warnings[0] and "'a: b'" in warnings[0] and "plain" not in warnings[0]
    back = read_trt_cache(path)
    assert list(back.amax) == ["StatefulPartitionedCall:0", "plain", "a: b"]
    assert back.amax["a: b"] == pytest.approx(3.0, rel=1e-6)


def test_unwritable_directory_is_a_ptq_error(tmp_path):
    with pytest.raises(PtqError, match="does not exist"):
        write_trt_cache(tmp_path / "missing" / "c.cache", {"x": 1.0})


# --- TensorRT cache reader ----------------------------------------------------------------------------------

def test_reads_tensorrt_style_cache(tmp_path):
    path = tmp_path / "trt.cache"
    # As TensorRT writes it: no trailing newline; an unpadded value from a writer that drops leading zeros.
    path.write_bytes(b"TRT-7000-EntropyCalibration2\r\ndata: 3c008912\r\n(Unnamed Layer* 3) [Convolution]_output:"
                     b" 3c010204\r\nsmall: 800000")
    cache = read_trt_cache(path)
    assert cache.version_code == 7000 and cache.version == "7.0.0"
    assert cache.algorithm == "EntropyCalibration2"
    # NVIDIA's sampleINT8 README example: 0x3c008912 = (1 + 0x008912 / 2^23) * 2^(0x78 - 127) = 0.00784518
    # (worked out by hand from the IEEE-754 fields), so amax = 127 * scale = 0.996338.
    assert cache.amax["data"] == pytest.approx(0.9963379, rel=1e-6)
    assert cache.amax["(Unnamed Layer* 3) [Convolution]_output"] == pytest.approx(1.0, rel=1e-6)
    assert cache.amax["small"] == pytest.approx(SMALLEST_SCALE * 127)
    assert cache.scales["data"] == pytest.approx(cache.amax["data"] / 127)


def test_modelopt_reads_our_cache(tmp_path):
    """Another tool's reader: ModelOpt's import_scales_from_calib_cache (bytes.fromhex, split on ': ')."""
    calib_utils = pytest.importorskip("modelopt.onnx.quantization.calib_utils")
    amax = {"input": 1.0, "StatefulPartitionedCall:0": 2.5, "tiny": 1e-36, "conv/relu": 300.0}
    path = tmp_path / "calibration.cache"
    write_trt_cache(path, amax, version="8.5.1")
    scales = calib_utils.import_scales_from_calib_cache(str(path))
    assert list(scales) == [f"{name}_scale" for name in amax]
    assert scales["input_scale"] == pytest.approx(1 / 127, rel=1e-7)  # 3c010204, the documented value
    for name, value in amax.items():
        assert scales[f"{name}_scale"] * 127 == pytest.approx(value, rel=1e-6), name


@pytest.mark.parametrize("content, line", [
    ("not a cache\nx: 3c010204\n", 1),
    ("", 1),
    ("TRT-100300-EntropyCalibration2\nx: 3c010204\ny 3c010204\n", 3),
    ("TRT-100300-EntropyCalibration2\nx: zz010204\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: 3c0102041\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: 3c010204\nx: 3c010204\n", 3),
    ("TRT-100300-EntropyCalibration2\n: 3c010204\n", 2),
    # Scales that quantise nothing (IEEE-754 bits of NaN, +inf, 0 and -1.0)
    ("TRT-100300-EntropyCalibration2\nx: 3c010204\ny: 7fc00000\n", 3),
    ("TRT-100300-EntropyCalibration2\nx: 7f800000\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: 0\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: bf800000\n", 2),
])
def test_garbage_gives_file_and_line(tmp_path, content, line):
    path = tmp_path / "bad.cache"
    path.write_text(content)
    with pytest.raises(FormatError) as err:
        read_trt_cache(path)
    assert str(err.value).startswith(f"{path}:{line}:") and "\n" not in str(err.value)


def test_binary_and_missing_files(tmp_path):
    path = tmp_path / "bin.cache"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError, match="bin.cache"):
        read_trt_cache(path)
    with pytest.raises(PtqError, match="not found"):
        read_trt_cache(tmp_path / "nope.cache")


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85"
                              "\u2028\u2029"), min_size=1, max_size=20).filter(lambda s: s.strip() == s)
amaxes = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, amaxes, min_size=1, max_size=8))
def test_round_trip_within_float32(amax):
    text, _ = format_trt_cache(amax, version="8.6.1", calibrator="minmax")
    cache = parse_trt_cache(text)
    assert cache.version_code == 8601 and cache.algorithm == "MinMaxCalibration"
    assert list(cache.amax) == list(amax)
    for name, value in amax.items():
        assert cache.amax[name] == pytest.approx(float32(value / 127) * 127, rel=1e-12)
        assert cache.amax[name] == pytest.approx(value, rel=1e-6)


# --- ptqengine scales JSON ----------------------------------------------------------------------------------

def fake_result(amax, metadata=None):
    rng = np.random.default_rng(0)
    tensors = {name: TensorStats().update(rng.standard_normal(100).astype(np.float32) * (i + 1))
               for i, name in enumerate(amax)}
    if metadata is None:
        metadata = {"model": {"file": "m.onnx", "sha256": "ab" * 32},
                    "data": {"manifest_sha256": "cd" * 32, "samples": 100}, "tool_version": "9.9.9"}
    bundle = StatsBundle(tensors, metadata)
    return SimpleNamespace(stats=bundle, algo="percentile", algo_options={"percentile": np.float64(99.9)},
                           amax=dict(amax))


def test_scales_json_schema_and_determinism(tmp_path):
    result = fake_result({"z_input": 1.5, "a_conv": 3.0})
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_scales_json(a, result)
    write_scales_json(b, fake_result({"z_input": 1.5, "a_conv": 3.0}))
    assert a.read_bytes() == b.read_bytes() and a.read_bytes().endswith(b"}\n")
    doc = json.loads(a.read_text())
    assert a.read_text() == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    assert doc["format"] == "ptqengine-scales" and doc["version"] == 1 and doc["tool_version"] == "9.9.9"
    assert doc["model"] == {"file": "m.onnx", "sha256": "ab" * 32}
    assert doc["data"] == {"manifest_sha256": "cd" * 32, "samples": 100}
    assert doc["algorithm"] == {"name": "percentile", "options": {"percentile": 99.9}}
    assert [t["name"] for t in doc["tensors"]] == ["z_input", "a_conv"]  # graph order, not sorted
    stats = result.stats.tensors["a_conv"]
    entry = doc["tensors"][1]
    assert entry["amax"] == 3.0 and entry["scale"] == pytest.approx(3.0 / 127)
    assert entry["min"] == pytest.approx(stats.min) and entry["max"] == pytest.approx(stats.max)
    assert entry["count"] == 100 and entry["nan_count"] == 0 and entry["inf_count"] == 0
    assert read_scales_json(a) == {"z_input": 1.5, "a_conv": 3.0}


def test_scales_json_nonfinite_and_missing_metadata(tmp_path):
    result = fake_result({"x": math.nan}, metadata={})
    result.stats.tensors["x"].update(np.array([np.nan, np.inf, 1.0], np.float32))
    path = tmp_path / "s.json"
    write_scales_json(path, result)
    doc = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert "NaN" not in path.read_text()
    entry = doc["tensors"][0]
    assert entry["amax"] is None and entry["scale"] is None
    assert entry["nan_count"] == 1 and entry["inf_count"] == 1
    assert doc["model"] == {"file": None, "sha256": None}
    assert math.isnan(read_scales_json(path)["x"])


@pytest.mark.parametrize("document, words", [
    ({"format": "other"}, "not a ptqengine scales file"),
    ({"format": "ptqengine-scales", "version": 2, "tensors": []}, "version 2"),
    ({"format": "ptqengine-scales", "version": 1, "tensors": [{"amax": 1}]}, r"tensors\[0\]"),
    ({"format": "ptqengine-scales", "version": 1, "tensors": [{"name": "x", "amax": "big"}]}, "'x'"),
])
def test_scales_json_rejects_bad_documents(tmp_path, document, words):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(document))
    with pytest.raises(FormatError, match=words):
        read_scales_json(path)


def test_scales_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{\n"format": \n')
    with pytest.raises(FormatError, match=r"s\.json:\d+: not valid JSON"):
        read_scales_json(path)


# --- onnxruntime calibration.json ---------------------------------------------------------------------------

def ort_calibration_dir(tmp_path):
    """Run onnxruntime's own MinMax calibrator on a tiny model and write its calibration table."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization.quant_utils import write_calibration_table

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    feeds = [np.array([[1, -2, 3, -4]], np.float32), np.array([[0.5, 2, -1, 1]], np.float32)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": f} for f in feeds])

        def get_next(self):
            return next(self.it, None)

    calibrator = create_calibrator(tmp_path / "m.onnx", [], augmented_model_path=str(tmp_path / "aug.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Reader())
    out = tmp_path / "ort"
    out.mkdir()
    write_calibration_table(calibrator.compute_data(), dir=str(out))
    stacked = np.concatenate(feeds)
    relu = np.maximum(stacked, 0)
    expected = {"x": float(np.abs(stacked).max()), "r": float(relu.max()), "y": float(relu.max())}
    return out / "calibration.json", expected


def test_reads_onnxruntime_calibration_json(tmp_path):
    path, expected = ort_calibration_dir(tmp_path)
    amax = read_ort_calibration_json(path)
    assert amax == pytest.approx(expected)
    # y = -relu(x) is never positive: amax must come from |lowest|, not from max(lowest, highest).
    assert amax["y"] == 3.0
    assert read_scale_table(path) == (KIND_ORT_JSON, amax)


def test_reads_older_onnxruntime_pairs_and_bare_tensordata(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"a": [-0.5, 2.0], "b": [-7.0, 1.0]}))
    assert read_ort_calibration_json(old) == {"a": 2.0, "b": 7.0}
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"a": {"CLS": "TensorData", "lowest": -1.0, "highest": 0.25,
                                      "hist": [1, 2], "bins": [0, 1, 2]}}))
    assert read_ort_calibration_json(bare) == {"a": 1.0}


@pytest.mark.parametrize("document, words", [
    ([1, 2], "top level"),
    ({}, "no tensors"),
    ({"a": [1.0]}, "'a'"),
    ({"a": {"lowest": 1.0}}, "'a'"),
    ({"a": ["x", 1.0]}, "'a'"),
])
def test_ort_json_rejects_bad_documents(tmp_path, document, words):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(document))
    with pytest.raises(FormatError, match=words):
        read_ort_calibration_json(path)


# --- detection ----------------------------------------------------------------------------------------------

def test_read_scale_table_detects_each_format(tmp_path):
    amax = {"x": 1.0, "y": 2.0}
    write_trt_cache(tmp_path / "c.cache", amax)
    kind, table = read_scale_table(tmp_path / "c.cache")
    assert kind == KIND_TENSORRT and table == pytest.approx(amax)
    write_scales_json(tmp_path / "s.json", fake_result(amax))
    assert read_scale_table(tmp_path / "s.json") == (KIND_SCALES_JSON, amax)


@pytest.mark.parametrize("content, words", [
    (b"x 1.5\ny 2.0\n", "calibration.json instead"),
    (b"hello world, this is text\n", "not a TensorRT calibration cache"),
    (b'{"some": "json"}', "neither"),
    (b"{broken", "not valid JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", "binary"),
])
def test_read_scale_table_rejects_other_files(tmp_path, content, words):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=words):
        read_scale_table(path)


def test_read_scale_table_points_stats_files_to_export(tmp_path):
    save_stats(tmp_path / "s.ptqs", {"x": TensorStats().update(np.ones(3, np.float32))})
    with pytest.raises(FormatError, match="export"):
        read_scale_table(tmp_path / "s.ptqs")
    with pytest.raises(PtqError, match="directory"):
        read_scale_table(tmp_path)
