"""--data-loader-script: Polygraphy's data loader script (`SCRIPT.py[:FUNC]`, default load_data) as calibration data.

The outside oracle is Polygraphy itself (installed from PyPI, the `test` extra): its DataLoaderArgs, the
argument group `polygraphy convert --int8 --data-loader-script` parses with, loads the same script and the
feed dicts it hands on must be the ones ours yields; a calibration on them, given as a plain list, must
write the same cache bytes as the CLI run on the script.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ptqengine.api as api
from ptqengine.algorithms import CHOICE
from ptqengine.errors import DataError
from ptqengine.loader_script import DEFAULT_FUNCTION, LoaderScript, split_script_argument

from conftest import conv_graph, save_model

COMMANDS = ("calibrate", "quantize", "analyze", "evaluate", "horizon")

LOADER = '''
import numpy as np

CALLS = []


def load_data():
    """Four batches of two: Polygraphy's usual shape of a calibration loader."""
    CALLS.append(1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        yield {"x": rng.standard_normal((2, 3, 40, 48)).astype(np.float32)}


def other_func():
    """A plain list of single samples (no batch dim), as Polygraphy also accepts."""
    return [{"x": np.full((3, 40, 48), i - 1.5, np.float32)} for i in range(5)]
'''


def polygraphy_args():
    try:
        from polygraphy.tools.args import DataLoaderArgs
    except ImportError:  # the test extra installs it; without it the oracle cannot run
        pytest.fail("test material missing: pip install polygraphy")
    return DataLoaderArgs


def polygraphy_feeds(argument: str):
    """The feed dicts Polygraphy's own --data-loader-script handling gives (polygraphy convert's arg group)."""
    group = polygraphy_args()()
    parser = argparse.ArgumentParser()
    group.add_parser_args(parser)
    group.parse(parser.parse_args(["--data-loader-script", argument]))
    return (group.data_loader_script, group.data_loader_func_name), list(group.get_data_loader())


@pytest.fixture
def model(tmp_path) -> Path:
    """conv_graph with an output shape, so the Q/DQ export's checker passes on it."""
    graph = conv_graph(["N", 3, 40, 48])
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1]))
    return save_model(graph, tmp_path / "conv.onnx")


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "data_loader.py"
    path.write_text(LOADER)
    return path


def write_script(tmp_path: Path, body: str, name: str = "loader.py") -> Path:
    path = tmp_path / name
    path.write_text("import numpy as np\n" + textwrap.dedent(body))
    return path


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# --- the argument and Polygraphy's reading of it -------------------------------------------------
@pytest.mark.parametrize("argument, expected", [
    ("data_loader.py", ("data_loader.py", "load_data")),
    ("data_loader.py:other_func", ("data_loader.py", "other_func")),
    ("dir/data_loader.py:load_data", ("dir/data_loader.py", "load_data")),
    ("data_loader.py:", ("data_loader.py", "load_data")),  # empty name: the default, as Polygraphy
    ("runs:2/loader.py:calib", ("runs:2/loader.py", "calib")),  # the last ':' splits
])
def test_argument_split_matches_polygraphy(argument, expected):
    from polygraphy.tools.args.util import parse_script_and_func_name

    assert split_script_argument(argument) == expected
    assert parse_script_and_func_name(argument, default_func_name="load_data") == expected
    assert DEFAULT_FUNCTION == "load_data"


def test_a_colon_in_the_path_without_a_function_is_the_whole_path(tmp_path):
    """Where Polygraphy would look for a function called '2/loader.py' (and fail), we read the path."""
    folder = tmp_path / "runs:2"
    folder.mkdir()
    write_script(folder, "def load_data():\n    return [{'x': np.zeros((3, 40, 48), np.float32)}]\n")
    loaded = LoaderScript.parse(str(folder / "loader.py"))
    assert loaded.path == folder / "loader.py" and loaded.function == "load_data"
    assert len(list(loaded)) == 1


@pytest.mark.parametrize("argument", ["data_loader.py", "data_loader.py:other_func"])
def test_polygraphy_loads_the_same_feed_dicts(script, argument, monkeypatch):
    monkeypatch.chdir(script.parent)
    (path, function), theirs = polygraphy_feeds(argument)
    ours = list(LoaderScript.parse(argument))
    assert (str(LoaderScript.parse(argument).path), LoaderScript.parse(argument).function) == (path, function)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
            assert a[name].dtype == b[name].dtype


@pytest.mark.parametrize("argument", ["data_loader.py", "data_loader.py:other_func"])
def test_cli_cache_equals_a_calibration_on_polygraphys_feed_dicts(cli, model, script, argument, tmp_path,
                                                                  monkeypatch):
    """The oracle end to end: Polygraphy's loaded feeds as a plain list give the same cache bytes."""
    monkeypatch.chdir(script.parent)
    _, feeds = polygraphy_feeds(argument)
    api.calibrate(model, feeds, algo=CHOICE).write_trt_cache(tmp_path / "oracle.cache")  # the CLI default
    result = cli("calibrate", model, "--data-loader-script", argument, "-o", tmp_path / "ours.cache", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ours.cache").read_bytes() == (tmp_path / "oracle.cache").read_bytes()


# --- passes, batches, determinism ------------------------------------------------------------------
def test_batches_in_a_feed_dict_are_split_into_samples(model, script):
    """Four dicts of two (batched, rank 4) give 8 samples; five single samples (rank 3) give 5."""
    assert api.calibrate(model, LoaderScript.parse(str(script))).report.samples == 8
    assert api.calibrate(model, LoaderScript.parse(f"{script}:other_func")).report.samples == 5


def test_fixed_batch_model_takes_batched_dicts(tmp_path, script):
    """A model with batch 1 gets the same 8 samples, run one at a time."""
    graph = conv_graph([1, 3, 40, 48])
    path = save_model(graph, tmp_path / "batch1.onnx")
    assert api.calibrate(path, LoaderScript.parse(str(script)), batch_size=4).report.samples == 8


def test_auto_calls_the_function_again_for_each_pass(model, script):
    """algo auto reads the data twice: a script passes the one-shot refusal and is called per pass."""
    loader = LoaderScript.parse(str(script))
    auto = api.calibrate(model, loader, algo="auto")
    assert loader.passes >= 2
    feeds = list(LoaderScript.parse(str(script)))
    assert auto.amax == api.calibrate(model, feeds, algo="auto").amax
    with pytest.raises(Exception, match="one-shot"):
        api.calibrate(model, iter(feeds), algo="auto")


def test_same_script_same_bytes(cli, model, script, tmp_path):
    outputs = []
    for run in ("a", "b"):
        result = cli("calibrate", model, "--data-loader-script", script, "-o", tmp_path / f"{run}.cache",
                     "--qdq", tmp_path / f"{run}.onnx", "--save-stats", tmp_path / f"{run}.ptqs", "-q")
        assert result.exit_code == 0, result.output
        outputs.append([(tmp_path / f"{run}{ext}").read_bytes() for ext in (".cache", ".onnx", ".ptqs")])
    assert outputs[0] == outputs[1]


def test_a_script_whose_name_is_not_utf8_runs(cli, model, script, tmp_path):
    import os

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/load\xff.py"))
    odd.write_bytes(script.read_bytes())
    result = cli("calibrate", model, "--data-loader-script", odd, "-o", tmp_path / "c.cache", "-q")
    assert result.exit_code == 0, result.output


# --- the five commands -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_the_option(cli, command, model, script, tmp_path):
    loader = f"{script}:other_func" if command == "quantize" else str(script)
    args = {
        "calibrate": [model, "-o", tmp_path / "c.cache", "--qdq", tmp_path / "q.onnx"],
        "quantize": [model, "-o", tmp_path / "q.onnx"],
        "analyze": [model, "-o", tmp_path / "report.html", "--samples", 4],
        "evaluate": [model, model],
        "horizon": [model, "--target", "J5", "--samples", 6, "-o", tmp_path / "kit"],
    }[command]
    result = cli(command, *args, "--data-loader-script", loader, *([] if command == "evaluate" else ["-q"]))
    assert result.exit_code == 0, result.output
    if command == "calibrate":
        assert (tmp_path / "c.cache").read_text().startswith("TRT-") and onnx.load(str(tmp_path / "q.onnx"))
    elif command == "quantize":
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    elif command == "analyze":
        assert (tmp_path / "report.html").stat().st_size > 0
    elif command == "evaluate":
        assert "on 8 samples" in result.output
    else:
        config = (tmp_path / "kit" / "config.yaml").read_text()
        assert "input_type_train: featuremap" in config and "norm_type: no_preprocess" in config
        files = sorted((tmp_path / "kit" / "calibration_data_f32").iterdir())
        assert len(files) == 6
        first = np.fromfile(files[0], np.float32)
        expected = next(iter(LoaderScript.parse(str(script))))["x"][0]
        np.testing.assert_array_equal(first, expected.ravel())  # the sample as the script gave it


# --- errors: one line naming the script, exit 2 ----------------------------------------------------
def test_data_and_script_are_exclusive(cli, model, script, small_images):
    line = one_line(cli("calibrate", model, "--data", small_images, "--data-loader-script", script))
    assert "--data and --data-loader-script" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_one_of_data_or_script_is_needed(cli, command, model):
    extra = {"quantize": ["-o", "q.onnx"], "evaluate": [model], "horizon": ["--target", "J5"]}.get(command, [])
    line = one_line(cli(command, model, *extra))
    expected = "--data-loader-script) or --stats" if command == "quantize" else "give --data or --data-loader-script"
    assert expected in line


def test_quantize_takes_a_script_or_stats_not_both(cli, model, script, tmp_path):
    stats = tmp_path / "s.ptqs"
    assert cli("calibrate", model, "--data-loader-script", script, "--save-stats", stats, "-o",
               tmp_path / "c.cache", "-q").exit_code == 0
    line = one_line(cli("quantize", model, "-o", tmp_path / "q.onnx", "--data-loader-script", script, "--stats", stats))
    assert "exactly one of" in line


def test_preprocessing_options_are_refused(cli, model, script):
    line = one_line(cli("calibrate", model, "--data-loader-script", script, "--mean", "1,2,3"))
    assert "--mean" in line and "do not apply" in line


def test_sharded_runs_refuse_a_script(cli, model, script):
    line = one_line(cli("calibrate", model, "--data-loader-script", script, "--engine", "local", "--workers", 2))
    assert str(script) in line and "sharded" in line


@pytest.mark.parametrize("body, name, argument_tail, expected", [
    (None, "absent.py", "", "no such file"),
    ("def load_data():\n    return []\n", "loader.txt", "", "not a .py script"),
    ("def load_data():\n    return []\n", "loader.py", ":missing", "defines no 'missing' (functions: load_data)"),
    ("def load_data(path):\n    return []\n", "loader.py", "", "must take no arguments"),
    ("load_data = 3\n", "loader.py", "", "'load_data' is not a function (int)"),
    ("raise RuntimeError('no dataset here')\n", "loader.py", "", "importing it raised RuntimeError: no dataset here "
                                                               "(loader.py line 2)"),
    ("def load_data(:\n", "loader.py", "", "importing it raised SyntaxError"),
    ("def load_data():\n    raise FileNotFoundError('calib/list.txt')\n", "loader.py", "",
     "load_data() raised FileNotFoundError: calib/list.txt (loader.py line 3)"),
    ("def load_data():\n    yield {'x': np.zeros((3, 40, 48), np.float32)}\n    raise KeyError('label')\n",
     "loader.py", "", "load_data() raised KeyError: 'label' (loader.py line 4)"),
    ("def load_data():\n    return None\n", "loader.py", "", "returned NoneType"),
    ("def load_data():\n    return {'x': np.zeros((3, 40, 48), np.float32)}\n", "loader.py", "", "returned dict"),
    ("def load_data():\n    return [np.zeros((3, 40, 48), np.float32)]\n", "loader.py", "",
     "item 0 is a ndarray, not a feed dict"),
    ("def load_data():\n    return iter([])\n", "loader.py", "", "yielded no feed dicts"),
    ("def load_data():\n    return [{'image': np.zeros((3, 40, 48), np.float32)}]\n", "loader.py", "",
     "load_data feed 0: no data for input 'x'"),
    ("def load_data():\n    return [{'x': np.zeros((3, 40, 48), np.float32), 'y2': np.zeros(1)}]\n", "loader.py",
     "", "load_data feed 0: 'y2' is not a model input"),
    ("def load_data():\n    return [{'x': np.zeros((3, 40, 48), np.int64)}]\n", "loader.py", "",
     "load_data feed 0: input 'x' expects float32, got int64"),
    ("def load_data():\n    return [{'x': np.zeros((3, 32, 32), np.float32)}]\n", "loader.py", "",
     "load_data feed 0: input 'x' expects shape [N,3,40,48], got [3,32,32]"),
])
def test_errors_are_one_line_naming_the_script(cli, model, tmp_path, body, name, argument_tail, expected):
    path = tmp_path / name
    if body is not None:
        write_script(tmp_path, body, name)
    line = one_line(cli("calibrate", model, "--data-loader-script", f"{path}{argument_tail}", "-o",
                        tmp_path / "c.cache"))
    assert expected in line
    assert str(path) in line
    assert not (tmp_path / "c.cache").exists()


def test_a_script_that_gives_nothing_the_second_time_is_named(model, tmp_path):
    """Re-callable means the function gives the data again: a shared one-shot generator is caught."""
    path = write_script(tmp_path, """
        FEEDS = iter([{'x': np.full((3, 40, 48), float(i), np.float32)} for i in range(3)])

        def load_data():
            return FEEDS
        """)
    with pytest.raises(DataError, match=r"yielded no feed dicts when called again \(pass 2\)"):
        api.calibrate(model, LoaderScript.parse(str(path)), algo="auto")


def test_sibling_modules_import_and_nothing_is_shadowed(model, tmp_path):
    """The script's folder is on sys.path while it imports (as Polygraphy puts it); a script called json.py
    does not replace the json module."""
    (tmp_path / "calib_helpers.py").write_text("import numpy as np\nFEEDS = [{'x': np.ones((3, 40, 48), np.float32)}]\n")
    write_script(tmp_path, "from calib_helpers import FEEDS\n\ndef load_data():\n    return FEEDS\n", "json.py")
    loader = LoaderScript.parse(str(tmp_path / "json.py"))
    import json

    assert json.dumps([1]) == "[1]"
    assert api.calibrate(model, loader).report.samples == 1
