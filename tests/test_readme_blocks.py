"""Every ```bash and ```python block of README.md runs as pasted, in README order, in one scratch folder.

A newcomer pastes blocks one after another, so later blocks may use what earlier ones wrote (the demo's
images, MODEL is redefined where a block needs it). Each bash block runs with `set -e -o pipefail`: every
command in it must succeed, not only the last. Blocks that need what CI does not have are skipped, each by
a marker it contains and a stated reason; a skip whose marker no longer matches a block fails, so the list
cannot silently grow stale.

Horizon's converters (hb_mapper, hb_compile) come with Horizon's Docker images only; where they are not
installed, a stand-in takes their place that checks what the README promises about them (run from inside
the output folder, next to config.yaml) and records the call.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
TIMEOUT_S = 600  # per block; all blocks together take about 1.5 minutes on 2 cores

# (marker found in the block, why it does not run here)
SKIPS = (
    ("python -m pytest", "the set-up commands: .ci/run runs them verbatim, and this test is part of command 2"),
    ("quantize model.onnx --data ./calib", "a user's model and folders (model.onnx, ./calib, ./val); five Q/DQ "
     "exports of a real model would add minutes to CI. The Usage block runs calibrate --qdq and evaluate on the "
     "demo, tests/test_qdq.py and tests/test_evaluate.py the options"),
    ("ptqengine analyze model.onnx", "a user's model and folder (model.onnx, ./calib); analyze runs hundreds of "
     "configurations (minutes on 2 cores); tests/test_analyze.py covers it"),
    ("--until-stable 1% --max-images 5000", "a user's folders of thousands of images (./calib, ./big); "
     "tests/test_convergence.py covers the options"),
    ("--engine ray --ray-address auto", "joins a running Ray cluster (--ray-address auto), which CI does not have; "
     "tests/test_distributed.py runs the local and Ray engines"),
    ("--device cuda", "needs an NVIDIA GPU and onnxruntime-gpu in place of onnxruntime; tests/test_cuda.py runs "
     "where one is present"),
)

CONVERTER_STAND_IN = """#!/usr/bin/env bash
# Stand-in for Horizon's {name}: the README runs it from inside the kit's folder, next to config.yaml.
echo "$PWD {name} $*" >> "{log}"
[ -f config.yaml ] || {{ echo "{name}: no config.yaml in $PWD" >&2; exit 1; }}
"""


class Block(NamedTuple):
    language: str
    heading: str
    text: str

    def skip_reason(self) -> Optional[str]:
        return next((reason for marker, reason in SKIPS if marker in self.text), None)


def readme_blocks(text: str) -> List[Block]:
    blocks = []
    for match in BLOCK.finditer(text):
        headings = re.findall(r"^#+ (.*)$", text[:match.start()], re.M)
        blocks.append(Block(match.group(1), headings[-1] if headings else "(top)", match.group(2)))
    return blocks


def converters(bin_dir: Path, log: Path) -> List[str]:
    """Stand-ins for the Horizon converters this machine lacks; returns their names."""
    made = []
    for name in ("hb_mapper", "hb_compile"):
        if shutil.which(name):
            continue
        path = bin_dir / name
        path.write_text(CONVERTER_STAND_IN.format(name=name, log=log))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        made.append(name)
    return made


def run_block(block: Block, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        command = [sys.executable, "-c", block.text]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_every_skip_names_a_block_and_every_block_runs_or_says_why():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert {b.language for b in blocks} == {"bash", "python"}
    for marker, _ in SKIPS:
        assert sum(marker in b.text for b in blocks) == 1, f"skip marker {marker!r} must match exactly one block"
    assert sum(b.skip_reason() is None for b in blocks) >= 3  # Usage, Python and Horizon at least


def test_stand_in_converter_refuses_a_folder_without_config(tmp_path):
    made = converters(tmp_path, tmp_path / "calls.log")
    if not made:
        pytest.skip("Horizon's converters are installed here: the README runs them for real")
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["hb_compile", "--config", "config.yaml"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "no config.yaml" in proc.stderr


def test_readme_blocks_run_as_pasted(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "converter_calls.log"
    converters(bin_dir, calls)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    ran = []
    for block in readme_blocks((ROOT / "README.md").read_text()):
        if block.skip_reason() is not None:
            continue
        proc = run_block(block, work, env)
        assert proc.returncode == 0, (f"README block under '{block.heading}' failed (exit {proc.returncode}):\n"
                                      f"{block.text}\n--- stderr ---\n{proc.stderr[-3000:]}")
        ran.append((block, proc))
        if block.heading == "Usage" and block.language == "bash":  # before later blocks rewrite the files
            for name in ("calibration.cache", "stats.ptqs"):  # the README's command reproduces the demo
                assert (work / name).read_bytes() == (work / "ptq_demo" / name).read_bytes(), name
    assert len(ran) >= 3
    # What the runnable blocks say they do, they did.
    usage = next(proc for block, proc in ran if block.heading == "Usage" and block.language == "bash")
    assert "PASS: INT8 tracks FP32" in usage.stdout and "100.0% / 100.0%" in usage.stdout
    for name in ("calibration.cache", "other.cache", "stats.ptqs", "model.int8.onnx", "ptq_demo/labels.txt"):
        assert (work / name).is_file(), name
    if calls.exists():  # the stand-ins ran from inside each kit, as the README's subshells promise
        called = calls.read_text().splitlines()
        assert [line.split()[:2] for line in called] == [[str(work / "horizon_j5"), "hb_mapper"],
                                                        [str(work / "horizon_j6e"), "hb_compile"]]
    config = (work / "horizon_j5" / "config.yaml").read_text()
    assert re.search(r"input_type_train:\s*bgr", config), "the demo's model reads BGR"
