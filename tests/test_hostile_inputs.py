"""Hostile inputs (issue 22): files other people made must not make us read elsewhere, replace what we must
not, exhaust memory or time, or end in a traceback. Every input is built here, at test time; cases that
could eat memory run in a child process under a resource limit and a timeout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ptqengine
from ptqengine.errors import ModelError, PtqError
from ptqengine.model import inspect_model

REPO = Path(__file__).resolve().parents[1]


# --- material --------------------------------------------------------------------------------------
def external_tensor(name: str, location: str, n: int = 4) -> onnx.TensorProto:
    """A float tensor of n values whose data lives at `location` (external data)."""
    t = helper.make_tensor(name, TensorProto.FLOAT, [n], [0.0] * n)
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def add_model(path: Path, constant: onnx.NodeProto, shape: List = None) -> Path:
    """y = Relu(x + c), c from `constant` (a node with output 'c')."""
    shape = shape or [1, 4]
    nodes = [constant, helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return save(graph, path)


def if_model(path: Path, location: str) -> Path:
    """y = Relu(x + c) where c comes out of an If whose both branches hold an external initializer."""
    def branch(name: str) -> onnx.GraphProto:
        ident = helper.make_node("Identity", [f"{name}_w"], [f"{name}_out"])
        return helper.make_graph([ident], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])],
                                 initializer=[external_tensor(f"{name}_w", location)])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("If", ["cond"], ["c"], then_branch=branch("then"), else_branch=branch("else")),
             helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[cond])
    return save(graph, path)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """(model folder holding w.bin of ones, current directory holding another w.bin of 100s)."""
    model_dir, cwd = tmp_path / "model", tmp_path / "cwd"
    model_dir.mkdir()
    cwd.mkdir()
    np.full(4, 1.0, np.float32).tofile(model_dir / "w.bin")
    np.full(4, 100.0, np.float32).tofile(cwd / "w.bin")
    np.save(cwd / "x.npy", np.zeros((4, 4), np.float32))
    monkeypatch.chdir(cwd)
    return model_dir, cwd


def run_limited(code: str, *, memory_mb: int = 1500, timeout: int = 60) -> subprocess.CompletedProcess:
    """Python `code` in a child process whose address space is capped; its result, never a hang."""
    limit = memory_mb * 1024 * 1024
    prologue = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    return subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


# --- 1. nothing is read from the current directory -------------------------------------------------
def test_constant_attribute_with_external_data_is_read_from_the_model_folder(folders):
    model_dir, _ = folders
    model = add_model(model_dir / "m.onnx",
                      helper.make_node("Constant", [], ["c"], value=external_tensor("cv", "w.bin")))
    result = ptqengine.calibrate(model, "x.npy", algo="max")
    assert result.amax["y"] == pytest.approx(1.0)  # 100 if w.bin were read from the current directory


def test_subgraph_initializer_with_external_data_is_read_from_the_model_folder(folders):
    model_dir, _ = folders
    result = ptqengine.calibrate(if_model(model_dir / "m.onnx", "w.bin"), "x.npy", algo="max")
    assert result.amax["y"] == pytest.approx(1.0)


@pytest.mark.parametrize("location", ["../cwd/w.bin", "/dev/zero", "", "a\0b", "x" * 5000])
@pytest.mark.parametrize("where", ["constant", "sparse", "subgraph"])
def test_every_tensor_location_is_checked(folders, location, where):
    model_dir, _ = folders
    path = model_dir / "m.onnx"
    if where == "constant":
        add_model(path, helper.make_node("Constant", [], ["c"], value=external_tensor("cv", location)))
    elif where == "sparse":
        values = external_tensor("sv", location, 1)
        indices = helper.make_tensor("si", TensorProto.INT64, [1], [0])
        sparse = helper.make_sparse_tensor(values, indices, [4])
        add_model(path, helper.make_node("Constant", [], ["c"], sparse_value=sparse))
    else:
        if_model(path, location)
    with pytest.raises(ModelError, match="external data location .* refused"):
        inspect_model(path)


def test_select_session_reads_external_data_from_the_model_folder(folders, small_images, cli):
    """select builds its session from bytes: the weights must come from the model folder, not the cwd."""
    from ptqengine.collect import Purpose, create_session

    model_dir, cwd = folders
    model = add_model(model_dir / "m.onnx",
                      helper.make_node("Constant", [], ["c"], value=external_tensor("cv", "w.bin")))
    feeds = {"x": np.zeros((1, 4), np.float32)}
    from_folder = create_session(model.read_bytes(), "m", purpose=Purpose.OBSERVE, external_data_dir=model_dir)
    assert from_folder.run(None, feeds)[0].tolist() == [[1.0] * 4]
    with pytest.raises(ModelError, match="onnxruntime cannot load"):  # bytes, no folder: never the cwd
        create_session(model.read_bytes(), "m", purpose=Purpose.OBSERVE)


# --- 2. -o never replaces what is not a regular file -----------------------------------------------
@pytest.fixture
def calibrated(elementwise_model, tmp_path):
    """(model, .npy data) ready for a CLI calibration run."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    return elementwise_model(), data


def char_device(path: Path, minor: int) -> Path:
    """A copy of /dev/null (minor 3) or /dev/full (minor 7) made with mknod (root only). Tests never name the
    real ones: a regression would replace the machine's /dev/null with a regular file."""
    import stat

    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root; the FIFO and file-size-limit "
                                                          "tests cover the same code paths")


@needs_root
def test_output_to_a_character_device_is_written_through_never_replaced(calibrated, cli, tmp_path):
    model, data = calibrated
    node = char_device(tmp_path / "null", 3)
    result = cli("calibrate", model, "--data", data, "-o", node, "-q")
    assert result.exit_code == 0, result.output
    assert node.is_char_device()


@needs_root
def test_write_errors_are_one_line(calibrated, cli, tmp_path):
    """A /dev/full copy: every write fails with ENOSPC, as on a full disk."""
    model, data = calibrated
    full = char_device(tmp_path / "full", 7)
    result = cli("calibrate", model, "--data", data, "-o", full, "-q")
    assert result.exit_code == 2, result.output
    assert f"{full}: cannot write" in result.output and len(result.output.strip().splitlines()) == 1
    assert full.is_char_device()


def test_output_to_a_fifo_is_written_through(calibrated, cli, tmp_path):
    import threading

    model, data = calibrated
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: List[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli("calibrate", model, "--data", data, "-o", fifo, "-q")
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert fifo.is_fifo() and received and received[0].startswith(b"TRT-")


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink"])
def test_output_that_is_a_symlink_is_refused_before_the_run(calibrated, cli, tmp_path, kind):
    model, data = calibrated
    victim = tmp_path / "victim.txt"
    if kind == "symlink":
        victim.write_text("keep me")
    link = tmp_path / "out.cache"
    link.symlink_to(victim)
    result = cli("calibrate", model, "--data", data, "-o", link, "-q")
    assert result.exit_code == 2
    assert "symbolic link" in result.output and len(result.output.strip().splitlines()) == 1
    assert link.is_symlink() and (victim.read_text() == "keep me" if kind == "symlink" else not victim.exists())


def test_outputs_of_a_failed_run_are_not_half_replaced(calibrated, cli, tmp_path, monkeypatch):
    """--save-stats used to be replaced before a later output failed; now all or none."""
    import ptqengine.formats

    def fails(*args, **kwargs):
        raise PtqError("the cache write failed")

    monkeypatch.setattr(ptqengine.formats, "write_scales_json", fails)
    model, data = calibrated
    stats, cache = tmp_path / "old.ptqs", tmp_path / "old.cache"
    stats.write_bytes(b"old statistics")
    cache.write_text("old cache")
    result = cli("calibrate", model, "--data", data, "--save-stats", stats, "-o", cache,
                 "--scales-json", tmp_path / "s.json", "-q")
    assert result.exit_code == 2 and "the cache write failed" in result.output
    assert stats.read_bytes() == b"old statistics" and cache.read_text() == "old cache"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_file_size_limit_is_one_line_and_leaves_nothing(calibrated, tmp_path):
    model, data = calibrated
    out = tmp_path / "big.json"
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))\n"
            "from ptqengine.cli.main import main\n"
            f"sys.argv = ['ptqengine', 'calibrate', {str(model)!r}, '--data', {str(data)!r}, '-o', "
            f"{str(tmp_path / 'c.cache')!r}, '--scales-json', {str(out)!r}, '-q']\nmain()\n")
    proc = run_limited(code, memory_mb=3000)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elementwise.onnx", "x.npy"])
