"""FP32 vs INT8 evaluation on a tiny classifier: metrics against hand-computed values, labels, JSON, verdict."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ptqengine.errors import DataError, ModelError, OptionError
from ptqengine.evaluate import evaluate

CLASSES = 5


def classifier(path, weight_scale: float = 1.0, noise: float = 0.0):
    """x [N,3,8,8] -> GlobalAveragePool -> Flatten -> MatMul -> logits [N, 5]."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, CLASSES)).astype(np.float32) * weight_scale
    w += noise * np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, w


@pytest.fixture
def images(tmp_path):
    directory = tmp_path / "images"
    directory.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(directory / f"img_{i}.png")
    return directory


def batch(directory):
    return np.stack([np.asarray(Image.open(p), dtype=np.float32).transpose(2, 0, 1)
                     for p in sorted(directory.glob("*.png"))])


def test_model_against_itself_is_perfect(tmp_path, images):
    path, _ = classifier(tmp_path / "a.onnx")
    report = evaluate(path, path, images, latency=False)
    (m,) = report.outputs
    assert report.samples == 10 and m.cosine == pytest.approx(1.0) and math.isinf(m.sqnr_db)
    assert m.max_abs_error == 0 and m.top1_agreement == 1.0 and report.passed and report.verdict.startswith("PASS")


def test_metrics_match_numpy(tmp_path, images):
    path_a, w_a = classifier(tmp_path / "a.onnx")
    path_b, w_b = classifier(tmp_path / "b.onnx", noise=0.4)
    report = evaluate(path_a, path_b, images, batch_size=3)
    pooled = batch(images).mean(axis=(2, 3)).astype(np.float64)
    ref, test = pooled @ w_a, pooled @ w_b
    (m,) = report.outputs
    assert m.cosine == pytest.approx(float((ref * test).sum() / np.sqrt((ref**2).sum() * (test**2).sum())), rel=1e-5)
    assert m.sqnr_db == pytest.approx(10 * np.log10((ref**2).sum() / ((ref - test) ** 2).sum()), rel=1e-4)
    assert m.max_abs_error == pytest.approx(np.abs(ref - test).max(), rel=1e-4)
    assert m.top1_agreement == pytest.approx(np.mean(ref.argmax(1) == test.argmax(1)))
    assert report.fp32.latency_ms > 0 and report.int8.latency_ms > 0
    assert report.fp32.size_bytes == path_a.stat().st_size


def test_drifting_model_gets_review_verdict(tmp_path, images):
    """Its advice: another algorithm, unless the images went in as raw pixels (then --mean/--std first)."""
    from ptqengine.preprocess import PreprocessConfig

    path_a, _ = classifier(tmp_path / "a.onnx")
    path_b, _ = classifier(tmp_path / "b.onnx", noise=3.0)
    report = evaluate(path_a, path_b, images, latency=False)
    assert not report.passed and report.verdict.startswith("REVIEW") and "give --mean/--std first" in report.verdict
    normalised = evaluate(path_a, path_b, images, latency=False, preprocess=PreprocessConfig(mean=(127.5,) * 3))
    assert normalised.verdict.startswith("REVIEW") and normalised.verdict.endswith("try another --algo or exclude "
                                                                                   "sensitive layers")


def test_labels_give_accuracy_and_json_holds_everything(tmp_path, images):
    path, w = classifier(tmp_path / "a.onnx")
    predicted = (batch(images).mean(axis=(2, 3)) @ w).argmax(1)
    files = sorted(p.name for p in images.glob("*.png"))
    truth = predicted.copy()
    truth[:3] = (truth[:3] + 1) % CLASSES  # three wrong labels: accuracy 70%
    (tmp_path / "labels.txt").write_text("".join(f"{f} {t}\n" for f, t in zip(files, truth)))
    report = evaluate(path, path, images, labels=tmp_path / "labels.txt", latency=False)
    assert report.outputs[0].accuracy_fp32 == pytest.approx(0.7) and report.outputs[0].accuracy_int8 == pytest.approx(0.7)
    report.write_json(tmp_path / "out.json")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["outputs"][0]["accuracy_fp32"] == pytest.approx(0.7) and saved["samples"] == 10
    assert set(saved) >= {"fp32", "int8", "verdict", "passed", "outputs"}


def test_labels_errors(tmp_path, images):
    path, _ = classifier(tmp_path / "a.onnx")
    (tmp_path / "short.txt").write_text("img_0.png 1\n")
    with pytest.raises(DataError, match="no label for image img_1.png"):
        evaluate(path, path, images, labels=tmp_path / "short.txt", latency=False)
    (tmp_path / "bad.txt").write_text("img_0.png cat\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        evaluate(path, path, images, labels=tmp_path / "bad.txt", latency=False)
    with pytest.raises(OptionError, match="batch_size"):
        evaluate(path, path, images, batch_size=0)


def test_feed_dicts_and_mismatched_outputs(tmp_path):
    path, _ = classifier(tmp_path / "a.onnx")
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 3, 8, 8)).astype(np.float32)} for i in range(3)]
    report = evaluate(path, path, feeds, latency=False)
    assert report.samples == 6
    other = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])]), opset_imports=[helper.make_opsetid("", 13)])
    other.ir_version = 8
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(ModelError, match="outputs"):
        evaluate(path, tmp_path / "other.onnx", feeds, latency=False)


def _fake_quant(values: np.ndarray, scale) -> np.ndarray:
    """int8 symmetric quantise-dequantise as ONNX QuantizeLinear defines it: round half to even, saturate."""
    return np.clip(np.rint(values / scale), -128, 127) * scale


def test_int8_is_measured_as_tensorrt_computes_it_on_any_cpu(tmp_path, images):
    """The default figures are those of the Q/DQ arithmetic itself (a NumPy oracle below), not of onnxruntime's
    fused int8 CPU kernels, whose sums saturate on x86 without VNNI; --cpu-kernels adds those, labelled."""
    from typer.testing import CliRunner

    from ptqengine.cli.main import app
    from ptqengine.qdq import AccuracyOptions, quantize_model

    path, w = classifier(tmp_path / "a.onnx", weight_scale=3.0)
    pooled = batch(images).mean(axis=(2, 3)).astype(np.float32)
    amax = 0.6 * float(np.abs(pooled).max())  # some values clip: the range matters
    quantize_model(path, tmp_path / "a.int8.onnx", calibration={"x": 255.0, "p": amax, "f": amax},
                   accuracy=AccuracyOptions(weight_scales="max"))
    w_scale = np.abs(w).max(axis=0) / 127.0  # per output channel (MatMul B is [K, N]), as asked for above
    ref = pooled.astype(np.float64) @ w
    test = _fake_quant(pooled, amax / 127.0) @ _fake_quant(w, w_scale)
    report = evaluate(path, tmp_path / "a.int8.onnx", images, latency=False)
    (m,) = report.outputs
    expected = float((ref * test).sum() / np.sqrt((ref ** 2).sum() * (test ** 2).sum()))
    assert m.cosine == pytest.approx(expected, abs=2e-6) and m.cosine < 0.99999
    assert m.max_abs_error == pytest.approx(np.abs(ref - test).max(), rel=1e-3)
    assert report.outputs_cpu_kernels is None
    both = evaluate(path, tmp_path / "a.int8.onnx", images, latency=False, cpu_kernels=True)
    assert both.outputs[0].cosine == m.cosine and len(both.outputs_cpu_kernels) == 1
    shown = CliRunner().invoke(app, ["evaluate", str(path), str(tmp_path / "a.int8.onnx"), "--data", str(images),
                                     "--cpu-kernels"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Q/DQ unfused" in shown.stdout and "fused int8 CPU kernels" in shown.stdout


def test_evaluate_and_analyze_share_one_rule_for_good_enough():
    """analyze's advice target and evaluate's verdict: cosine and (outputs with classes) agreement."""
    from ptqengine.metrics import AGREEMENT_TARGET, Score

    assert Score(0.995, 30.0, 0.0, None).meets(0.99)
    assert not Score(0.995, 30.0, 0.0, AGREEMENT_TARGET - 0.01).meets(0.99)  # the case analyze used to pass
    assert not Score(0.985, 30.0, 0.0, 1.0).meets(0.99)
    assert Score(0.985, 30.0, 0.0, 1.0).meets(0.98)


def softmax_classifier(path, logit_scale: float, noise: float = 0.0):
    """x [N,3,8,8] -> GlobalAveragePool -> Flatten -> MatMul -> Softmax: probabilities [N, 5]; a small
    logit_scale makes them near uniform (what a classifier gives images unlike its training data)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, CLASSES)).astype(np.float32) * logit_scale
    w += noise * np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    nodes = [helper.make_node("Sub", ["x", "mid"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1)]
    graph = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(127.5), "mid")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_tolerated_error_follows_from_the_cosine_target():
    from ptqengine.metrics import tolerated_error

    # noise uncorrelated with the signal: cosine = 1 / sqrt(1 + (e / s)^2)
    e = tolerated_error(2.0, 0.99)
    assert 1 / math.sqrt(1 + (e / 2.0) ** 2) == pytest.approx(0.99)
    assert tolerated_error(2.0, 1.0) == 0.0


def test_agreement_on_undecided_samples_is_not_a_verdict():
    """Near-uniform FP32 outputs: top-1 flips are noise; the score says so and judges by cosine alone."""
    from ptqengine.metrics import OutputComparison, UNDECIDED_LIMIT

    rng = np.random.default_rng(0)
    ref = 0.2 + 0.004 * rng.standard_normal((200, CLASSES))  # margins ~0.005, RMS 0.2: tolerated 0.028
    test = ref + 0.004 * rng.standard_normal(ref.shape)
    acc = OutputComparison("prob")
    acc.add(ref, test)
    score = acc.score()
    assert score.cosine > 0.99 and score.top1_agreement < 0.95
    assert score.undecided > UNDECIDED_LIMIT and not score.agreement_meaningful and score.meets()
    # analyze scores through compare_outputs with its --target-cosine: a stricter target tolerates less error
    from ptqengine.metrics import compare_outputs

    assert compare_outputs([[ref]], [[test]], target_cosine=0.99).undecided == score.undecided
    assert compare_outputs([[ref]], [[test]], target_cosine=1.0).undecided == 0.0
    confident = np.eye(CLASSES)[rng.integers(0, CLASSES, 200)] * 0.9 + 0.02
    sure = OutputComparison("prob")
    sure.add(confident, confident[::-1])  # a model that is wrong with confidence is still caught
    assert sure.score().undecided == 0.0 and not sure.score().meets()


def test_evaluate_says_when_agreement_is_not_meaningful(tmp_path, images):
    near_uniform = softmax_classifier(tmp_path / "a.onnx", logit_scale=0.01)
    drifted = softmax_classifier(tmp_path / "b.onnx", logit_scale=0.01, noise=0.01)
    report = evaluate(near_uniform, drifted, images, latency=False)
    (m,) = report.outputs
    assert m.undecided > 0.5 and m.cosine > 0.99
    assert report.passed and "not meaningful on these samples" in report.verdict
    confident = softmax_classifier(tmp_path / "c.onnx", logit_scale=3.0)
    drifted = softmax_classifier(tmp_path / "d.onnx", logit_scale=3.0, noise=3.0)
    report = evaluate(confident, drifted, images, latency=False)
    assert report.outputs[0].undecided < 0.5 and not report.passed and "not meaningful" not in report.verdict


def test_missing_mean_and_std_is_said_in_evaluate_and_the_python_api(tmp_path, images, caplog):
    """A forgotten --mean/--std gives bad figures that look like bad INT8: evaluate and ptqengine.calibrate
    warn through logging (the command line shows it as one warning line)."""
    import ptqengine
    from ptqengine.preprocess import RAW_PIXELS_NOTE, PreprocessConfig

    path, _ = classifier(tmp_path / "a.onnx")
    with caplog.at_level("WARNING", logger="ptqengine"):
        evaluate(path, path, images, latency=False)
        result = ptqengine.calibrate(path, images)
    assert [r.getMessage() for r in caplog.records] == [RAW_PIXELS_NOTE] * 2
    assert RAW_PIXELS_NOTE in result.report.notes  # the report keeps it; the CLI prints it once
    caplog.clear()
    normalised = PreprocessConfig(mean=(127.5,) * 3, std=(64.0,) * 3)
    with caplog.at_level("WARNING", logger="ptqengine"):
        evaluate(path, path, images, latency=False, preprocess=normalised)
        ptqengine.calibrate(path, images, preprocess=normalised)
        evaluate(path, path, [{"x": batch(images)}], latency=False)  # arrays: nothing to normalise
    assert caplog.records == []


def test_verdict_hints_at_undecided_samples_below_most():
    from ptqengine.evaluate import _verdict
    from ptqengine.metrics import OutputComparison

    rng = np.random.default_rng(1)
    sure = np.eye(CLASSES)[rng.integers(0, CLASSES, 70)] * 0.9 + 0.02
    unsure = np.full((30, CLASSES), 0.2) + 0.001 * rng.standard_normal((30, CLASSES))
    ref = np.concatenate([sure, unsure])
    acc = OutputComparison("prob")
    acc.add(ref, np.concatenate([sure, unsure[:, ::-1]]))  # only the undecided ones flip
    passed, verdict = _verdict([acc], 0.99)
    assert not passed and "% (FP32 itself undecided on 30% of samples)" in verdict
    assert acc.agreement < 0.95
