"""Calibration data for Horizon's converters.

Horizon inserts the (x - mean) * scale preprocessing into the compiled model, so its calibration
samples are the image BEFORE normalisation: resized, colour-converted and laid out as input_type_train /
input_layout_train / input_shape, float32. hb_mapper (X3/J3, J5, X5) reads headerless files written with
numpy `tofile` (read back with `fromfile`); hb_compile (J6) reads `.npy` (D-Robotics/rdk_doc
.../intermediate/ptq_process.md, "准备校准数据"; shared/REFERENCES.md). We get the un-normalised image
from the same preprocessing `calibrate` uses, with mean 0 and std 1 (x - 0) / 1 = x, so the files and
our statistics see exactly the same pixels.

Files are named `NNNN_<image stem>.bin|.npy`: the index fixes the order (Horizon pairs the inputs of a
multi-input model by file order), the stem says where each came from. One directory per input.

Data from a loader script (--data-loader-script) is already the model's input, normalised: it goes in as
a feature map (input_type_train / input_type_rt featuremap, no_preprocess), each sample as it came,
named `NNNN_feature`.
"""
from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import DataError, ModelError
from ..model import InputSpec
from ..preprocess import ImagePlan, PreprocessConfig, open_image, preprocess_pil

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "x"


@dataclass(frozen=True)
class HorizonInput:
    """One model input as Horizon sees it."""

    name: str
    plan: ImagePlan  # the preprocessing calibrate uses (with the user's mean/std)
    directory: str  # calibration directory name, relative to the output directory
    featuremap: bool = False  # loader-script data: model input as is, no preprocessing in the kit

    @property
    def train_type(self) -> str:
        return "featuremap" if self.featuremap else self.plan.config.color.lower() if self.plan.channels == 3 \
            else "gray"

    @property
    def shape(self) -> List[int]:
        p = self.plan
        return [1, p.channels, p.height, p.width] if p.layout == "NCHW" else [1, p.height, p.width, p.channels]

    @property
    def raw_plan(self) -> ImagePlan:
        """The same plan without normalisation: mean 0, std 1."""
        c = self.plan.channels
        return replace(self.plan, mean=np.zeros(c, np.float32), std=np.ones(c, np.float32))


def horizon_inputs(specs: Sequence[InputSpec], plans: Sequence[ImagePlan]) -> List[HorizonInput]:
    for spec in specs:
        if spec.fixed_batch not in (None, 1):
            raise ModelError(f"input {spec.name!r} has a fixed batch of {spec.fixed_batch}; Horizon calibration "
                             "files hold one sample each (export the model with batch 1 or a dynamic batch)")
    if len(specs) == 1:
        return [HorizonInput(specs[0].name, plans[0], "calibration_data_f32")]
    return [HorizonInput(s.name, p, f"calibration_data_{i}_{safe_name(s.name)}_f32")
            for i, (s, p) in enumerate(zip(specs, plans))]


def feature_inputs(specs: Sequence[InputSpec], first: Mapping[str, np.ndarray]) -> List[HorizonInput]:
    """Feature-map inputs shaped like the first loader-script sample (one sample, no batch dim)."""
    plans = []
    for spec in specs:
        shape = first[spec.name].shape
        if len(shape) != 3:
            raise DataError(f"input {spec.name!r} {spec.shape_text()}: Horizon kits take 4-D inputs")
        layout = spec.layout_guess or "NCHW"
        c, h, w = shape if layout == "NCHW" else (shape[2], shape[0], shape[1])
        plans.append(ImagePlan(spec.name, h, w, c, layout, PreprocessConfig(), np.zeros(c, np.float32),
                               np.ones(c, np.float32)))
    return [replace(h, featuremap=True) for h in horizon_inputs(specs, plans)]


def sample_file_name(index: int, image: Path, npy: bool) -> str:
    return f"{index:04d}_{safe_name(image.stem)}{'.npy' if npy else '.bin'}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_calibration_data(out_dir: Path, inputs: Sequence[HorizonInput], images: Sequence[Path], npy: bool,
                           progress: Optional[Callable[[int, Optional[int]], None]] = None) -> List[str]:
    """Write every input's directory (built beside it, then swapped in). Returns the sample file names."""
    names = [sample_file_name(i, img, npy) for i, img in enumerate(images)]

    def samples():
        for image in images:
            decoded = open_image(image)
            yield [preprocess_pil(decoded, hin.raw_plan) for hin in inputs]

    _write_samples(out_dir, inputs, names, samples(), npy, progress)
    return names


def write_feature_data(out_dir: Path, inputs: Sequence[HorizonInput], samples: Sequence[Mapping[str, np.ndarray]],
                       npy: bool, progress: Optional[Callable[[int, Optional[int]], None]] = None) -> List[str]:
    """Loader-script samples (input name -> one sample) as they are, float32. Returns the file names."""
    names = [f"{i:04d}_feature{'.npy' if npy else '.bin'}" for i in range(len(samples))]
    _write_samples(out_dir, inputs, names, ([np.asarray(s[h.name], np.float32) for h in inputs] for s in samples),
                   npy, progress)
    return names


def _write_samples(out_dir: Path, inputs: Sequence[HorizonInput], names: Sequence[str],
                   samples: Iterable[List[np.ndarray]], npy: bool,
                   progress: Optional[Callable[[int, Optional[int]], None]]) -> None:
    staging = [Path(tempfile.mkdtemp(prefix=f".{h.directory}.", dir=out_dir)) for h in inputs]
    try:
        for done, (arrays, name) in enumerate(zip(samples, names), start=1):
            for array, stage in zip(arrays, staging):
                sample = array[np.newaxis]
                data = _npy_bytes(sample) if npy else np.ascontiguousarray(sample, np.float32).tobytes()
                write_bytes_atomic(stage / name, data)
            if progress is not None:
                progress(done, len(names))
        for hin, stage in zip(inputs, staging):
            _swap_in(stage, out_dir / hin.directory)
    finally:
        for stage in staging:
            shutil.rmtree(stage, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Replace target (a directory we wrote before, or nothing) by new."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.chmod(0o755)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
