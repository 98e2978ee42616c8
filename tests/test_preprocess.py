"""Image preprocessing: resize modes, colour order, normalisation, layout, YAML config, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ptqengine.errors import DataError, OptionError
from ptqengine.model import InputSpec
from ptqengine.preprocess import (ALL_INPUTS, LETTERBOX_FILL, PreprocessConfig, load_preprocess_config,
                                  parse_size, preprocess_image)

NCHW = InputSpec("x", ["N", 3, 4, 6], np.dtype(np.float32), "NCHW")


def solid(color, size=(6, 4), mode="RGB"):
    return Image.new(mode, size, color)


def test_normalisation_in_pixel_units_and_layouts():
    cfg = PreprocessConfig(mean=(10, 20, 30), std=(2, 4, 5))
    out = preprocess_image(solid((110, 120, 130)), cfg, NCHW)
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], [50, 25, 20])
    nhwc = InputSpec("x", ["N", 4, 6, 3], np.dtype(np.float32), "NHWC")
    out2 = preprocess_image(solid((110, 120, 130)), cfg, nhwc)
    assert out2.shape == (4, 6, 3)
    np.testing.assert_array_equal(out2[0, 0], [50, 25, 20])


def test_bgr_reverses_channels_before_mean():
    cfg = PreprocessConfig(color="BGR", mean=(1, 2, 3))
    out = preprocess_image(solid((10, 20, 30)), cfg, NCHW)
    np.testing.assert_array_equal(out[:, 0, 0], [29, 18, 7])


def test_stretch_crop_and_letterbox(tmp_path):
    # 12x4 image: left half red, right half blue; model wants 4x4.
    arr = np.zeros((4, 12, 3), np.uint8)
    arr[:, :6, 0] = 255
    arr[:, 6:, 2] = 255
    img = Image.fromarray(arr)
    spec = InputSpec("x", [1, 3, 4, 4], np.dtype(np.float32), "NCHW")
    stretch = preprocess_image(img, PreprocessConfig(resize="stretch"), spec)
    assert stretch[0, :, 0].min() > 200 and stretch[2, :, -1].min() > 200  # both halves survive
    crop = preprocess_image(img, PreprocessConfig(resize="crop"), spec)
    assert crop.shape == (3, 4, 4)
    assert crop[0, :, :2].min() > 200 and crop[2, :, 2:].min() > 200  # centre 4x4 of the 12x4
    letter = preprocess_image(img, PreprocessConfig(resize="letterbox"), spec)
    # scaled to 4 wide x 1.33 high, padded top and bottom with the fill value
    np.testing.assert_array_equal(letter[:, 0, :], LETTERBOX_FILL)
    np.testing.assert_array_equal(letter[:, -1, :], LETTERBOX_FILL)


def test_gray_input_and_gray_image():
    gray_spec = InputSpec("x", ["N", 1, 4, 6], np.dtype(np.float32), "NCHW")
    out = preprocess_image(solid((90, 90, 90)), PreprocessConfig(), gray_spec)
    assert out.shape == (1, 4, 6)
    np.testing.assert_allclose(out, 90, atol=1)
    # a grayscale image for a 3-channel input is replicated into 3 channels
    out3 = preprocess_image(solid(77, mode="L"), PreprocessConfig(), NCHW)
    np.testing.assert_array_equal(out3[:, 0, 0], [77, 77, 77])


def test_size_from_config_for_dynamic_dims_and_errors():
    dyn = InputSpec("img", ["N", 3, "H", "W"], np.dtype(np.float32), "NCHW")
    with pytest.raises(OptionError, match="'img'.*dynamic height/width; give --size"):
        preprocess_image(solid((1, 2, 3)), PreprocessConfig(), dyn)
    assert preprocess_image(solid((1, 2, 3)), PreprocessConfig(size=(5, 7)), dyn).shape == (3, 5, 7)
    with pytest.raises(OptionError, match="size 5,7 does not match input 'x'"):
        preprocess_image(solid((1, 2, 3)), PreprocessConfig(size=(5, 7)), NCHW)
    with pytest.raises(OptionError, match="mean has 2 values; the input has 3 channels"):
        preprocess_image(solid((1, 2, 3)), PreprocessConfig(mean=(1, 2)), NCHW)
    with pytest.raises(OptionError, match="color GRAY but input 'x'"):
        preprocess_image(solid((1, 2, 3)), PreprocessConfig(color="GRAY"), NCHW)
    with pytest.raises(OptionError, match="cannot tell NCHW from NHWC"):
        preprocess_image(solid((1, 2, 3)), PreprocessConfig(),
                         InputSpec("x", ["N", 8, 8, 8], np.dtype(np.float32), None))
    with pytest.raises(OptionError, match="resize 'zoom'"):
        PreprocessConfig(resize="zoom")


def test_corrupt_and_truncated_files_are_data_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        preprocess_image(bad, PreprocessConfig(), NCHW)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot decode image"):
        preprocess_image(cut, PreprocessConfig(), NCHW)


def test_yaml_config_common_and_per_input(tmp_path):
    path = tmp_path / "pre.yaml"
    path.write_text("size: 224,224\nmean: [123.675, 116.28, 103.53]\nstd: 58.4 57.1 57.4\ncolor: bgr\n"
                    "inputs:\n  depth:\n    color: GRAY\n    mean: 0\n")
    cfg = load_preprocess_config(path)
    assert cfg[ALL_INPUTS] == PreprocessConfig(size=(224, 224), mean=(123.675, 116.28, 103.53),
                                               std=(58.4, 57.1, 57.4), color="BGR")
    assert cfg["depth"].color == "GRAY" and cfg["depth"].mean == (0.0,) and cfg["depth"].size == (224, 224)
    path.write_text("sise: 3\n")
    with pytest.raises(OptionError, match="unknown key 'sise'"):
        load_preprocess_config(path)
    with pytest.raises(OptionError, match="not found"):
        load_preprocess_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text,size", [("224,224", (224, 224)), ("320x240", (320, 240)), (96, (96, 96)),
                                       ([7, 9], (7, 9))])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_large_jpeg_decoded_at_reduced_scale_but_not_below_target(tmp_path):
    from ptqengine.preprocess import open_image

    big = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1000, 1400, 3), dtype=np.uint8)).save(big, quality=80)
    assert open_image(big).size == (1400, 1000)
    w, h = open_image(big, (224, 224)).size
    assert 224 <= w < 1400 and 224 <= h < 1000
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert open_image(png, (224, 224)).size == (1400, 1000)  # only JPEG has DCT scaling
    out = preprocess_image(big, PreprocessConfig(), NCHW)
    assert out.shape == (3, 4, 6)
