"""Image preprocessing: decode, colour conversion, resize, (pixel - mean) / std, layout.

mean and std are in 0-255 pixel units and applied after resize and colour conversion, so the
ImageNet normalisation reads mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375).
"""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import DataError, OptionError
from .model import InputSpec

RESIZE_MODES = ("stretch", "crop", "letterbox")
COLORS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")
LETTERBOX_FILL = 114  # grey border, the value YOLO-style letterboxing uses
ALL_INPUTS = "*"  # key of the config that applies to every input in load_preprocess_config's result


@dataclass(frozen=True)
class PreprocessConfig:
    size: Optional[Tuple[int, int]] = None  # (H, W); None = from the model
    resize: str = "stretch"
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    color: str = "RGB"
    layout: Optional[str] = None  # None = from the model

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise OptionError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.color not in COLORS:
            raise OptionError(f"color {self.color!r} is not one of {', '.join(COLORS)}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise OptionError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise OptionError(f"size must be two positive integers H,W, got {self.size}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise OptionError("std must not contain 0")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (lists, not tuples) for metadata."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# --- parsing option values (shared with the CLI and the YAML loader) -----------------------------
def parse_floats(value: Any, option: str, nonzero: bool = False) -> Optional[Tuple[float, ...]]:
    """'1,2,3', '1 2 3', [1, 2, 3] or 1.0 -> (1.0, 2.0, 3.0); `option` names the value in errors."""
    if value is None:
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else \
        list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise OptionError(f"{option}: expected comma-separated numbers (e.g. 123.675,116.28,103.53), "
                          f"got {value!r}") from None
    if not out:
        raise OptionError(f"{option}: expected numbers, got {value!r}")
    if not all(math.isfinite(v) for v in out):  # a NaN or infinite mean / std makes every input NaN or 0
        raise OptionError(f"{option}: values must be finite numbers, got {value!r}")
    if nonzero and any(v == 0 for v in out):
        raise OptionError(f"{option}: values must not be 0, got {value!r}")
    return out


def parse_size(value: Any, option: str = "size") -> Optional[Tuple[int, int]]:
    """'224,224', '224x224', [224, 224] or the number 224 -> (H, W), both positive."""
    if value is None:
        return None
    if isinstance(value, str):  # text says both: '224' alone is more likely a typo than a square
        items = value.replace("x", ",").replace(",", " ").split()
    else:  # YAML: size: 224 is a square, size: [224, 320] is H, W
        items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    try:
        h, w = (int(v) for v in items)
    except (TypeError, ValueError, OverflowError):  # OverflowError: size: .inf
        raise OptionError(f"{option}: expected H,W (two positive integers, e.g. 224,224), got {value!r}") from None
    if h < 1 or w < 1:
        raise OptionError(f"{option}: H and W must be positive, got {value!r}")
    return h, w


def config_from_mapping(values: Mapping[str, Any], base: Optional[PreprocessConfig] = None,
                        source: str = "config") -> PreprocessConfig:
    """A PreprocessConfig from YAML/CLI-style keys, on top of base."""
    known = {f.name for f in fields(PreprocessConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionError(f"{source}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    merged = asdict(base) if base else {}
    for key, value in values.items():
        if key == "size":
            value = parse_size(value, f"{source}: size")
        elif key in ("mean", "std"):
            value = parse_floats(value, key, nonzero=key == "std")
        elif key in ("color", "layout") and isinstance(value, str):
            value = value.upper()
        elif key == "resize" and isinstance(value, str):
            value = value.lower()
        merged[key] = value
    return PreprocessConfig(**merged)


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16  # a preprocessing config is two levels deep; deeper is not a config


def parse_yaml(text: str, origin: str) -> Any:
    """yaml.safe_load without aliases and with a depth limit (OptionError naming origin otherwise).

    An alias repeats a node without repeating its text: nine nested levels of ten aliases each
    ("billion laughs") expand a 1 KB file into gigabytes. Nesting thousands deep overflows PyYAML's
    recursive composer. A preprocessing config needs neither."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise OptionError(f"{origin}: line {mark.line + 1}: YAML aliases (*name) are not accepted; "
                                  "write the value out")
            self.depth += 1
            if self.depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise OptionError(f"{origin}: line {mark.line + 1}: nested more than {MAX_CONFIG_DEPTH} levels deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Loader(text)
    try:
        return loader.get_single_data()
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of 4,300+ digits, a date like 2024-13-45
        raise OptionError(f"{origin}: cannot read preprocessing config ({str(exc).splitlines()[0]})") from None
    finally:
        loader.dispose()


def load_preprocess_config(path: Union[str, Path]) -> Dict[str, PreprocessConfig]:
    """YAML: top-level keys apply to every input (result key "*"); `inputs: {name: {...}}` overrides."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise OptionError(f"{p}: preprocessing config not found") from None
    except OSError as exc:
        raise OptionError(f"{p}: cannot read preprocessing config ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise OptionError(f"{p}: preprocessing config larger than {MAX_CONFIG_BYTES // 1024} KiB; refused")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OptionError(f"{p}: preprocessing config is not UTF-8 text (byte {exc.start})") from None
    data = parse_yaml(text, str(p)) or {}
    if not isinstance(data, dict):
        raise OptionError(f"{p}: expected a mapping of preprocessing keys")
    per_input = data.pop("inputs", None) or {}
    if not isinstance(per_input, dict):
        raise OptionError(f"{p}: 'inputs' must map input names to settings")
    common = config_from_mapping(data, source=str(p))
    result = {ALL_INPUTS: common}
    for name, values in per_input.items():
        if not isinstance(values, dict):
            raise OptionError(f"{p}: inputs.{name} must be a mapping")
        result[str(name)] = config_from_mapping(values, common, source=f"{p}: inputs.{name}")
    return result


# Said whenever images are fed without mean/std: often a forgotten option, and then every range is wrong.
RAW_PIXELS_NOTE = "no mean/std given: images fed as raw 0-255 pixel values"


def raw_pixels(configs: Sequence[PreprocessConfig]) -> bool:
    """True when no input's preprocessing normalises (neither mean nor std given anywhere)."""
    return bool(configs) and all(c.mean is None and c.std is None for c in configs)


def config_for(preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None],
               input_name: str) -> PreprocessConfig:
    if preprocess is None:
        return PreprocessConfig()
    if isinstance(preprocess, PreprocessConfig):
        return preprocess
    return preprocess.get(input_name) or preprocess.get(ALL_INPUTS) or PreprocessConfig()


# --- the plan for one input: every decision made once, before any image is read -------------------
@dataclass(frozen=True)
class ImagePlan:
    """Resolved preprocessing of one model input."""

    input_name: str
    height: int
    width: int
    channels: int
    layout: str
    config: PreprocessConfig
    mean: np.ndarray  # per channel, float32
    std: np.ndarray


def plans_for(specs: Sequence[InputSpec], preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None]
              ) -> List[ImagePlan]:
    """The plan of every input, for feeding images; OptionError for a model images cannot feed, or a
    per-input setting naming no input (a typo would otherwise be ignored)."""
    if not specs:
        raise OptionError("the model has no inputs: there is nothing to feed images to")
    if isinstance(preprocess, Mapping):
        unknown = sorted(set(preprocess) - {ALL_INPUTS} - {s.name for s in specs})
        if unknown:
            raise OptionError(f"preprocessing settings for {', '.join(map(repr, unknown))}: the model has no such "
                              f"input (its inputs: {', '.join(s.name for s in specs)})")
    for s in specs:
        if s.dtype.kind != "f":  # images become float pixels; an integer input takes ids, masks or sizes
            raise OptionError(f"input {s.name!r} takes {s.dtype} values, not image pixels: give arrays "
                              "(.npy/.npz) for it")
    return [plan_for(s, config_for(preprocess, s.name)) for s in specs]


def plan_for(spec: InputSpec, config: PreprocessConfig) -> ImagePlan:
    if spec.rank != 4:
        raise OptionError(f"input {spec.name!r} has shape {spec.shape_text()}; images need a 4-D input "
                          "(N,C,H,W or N,H,W,C): give arrays (.npy/.npz) instead")
    layout = config.layout or spec.layout_guess
    if layout is None:
        raise OptionError(f"input {spec.name!r} {spec.shape_text()}: cannot tell NCHW from NHWC; "
                          "give --layout")
    c_dim, h_dim, w_dim = (spec.shape[1], spec.shape[2], spec.shape[3]) if layout == "NCHW" else \
        (spec.shape[3], spec.shape[1], spec.shape[2])
    model_hw = (h_dim, w_dim) if isinstance(h_dim, int) and isinstance(w_dim, int) else None
    if config.size is not None and model_hw is not None and tuple(config.size) != model_hw:
        raise OptionError(f"--size {config.size[0]},{config.size[1]} does not match input {spec.name!r} "
                          f"{spec.shape_text()} ({layout})")
    size = config.size or model_hw
    if size is None:
        raise OptionError(f"input {spec.name!r} {spec.shape_text()} has a dynamic height/width; give --size H,W")
    if min(size) < 1:
        raise OptionError(f"input {spec.name!r} {spec.shape_text()} ({layout}) has no pixels; images cannot feed it")
    channels = c_dim if isinstance(c_dim, int) else (1 if config.color == "GRAY" else 3)
    if channels not in (1, 3):
        raise OptionError(f"input {spec.name!r} has {channels} channels; images give 1 or 3")
    if channels == 1 and config.color != "GRAY":
        config = PreprocessConfig(**{**asdict(config), "color": "GRAY"})
    if channels == 3 and config.color == "GRAY":
        raise OptionError(f"color GRAY but input {spec.name!r} {spec.shape_text()} has 3 channels")
    return ImagePlan(spec.name, size[0], size[1], channels, layout, config,
                     _per_channel(config.mean, 0.0, channels, "mean"),
                     _per_channel(config.std, 1.0, channels, "std"))


def _per_channel(values: Optional[Tuple[float, ...]], default: float, channels: int, name: str) -> np.ndarray:
    if values is None:
        values = (default,)
    if len(values) not in (1, channels):
        raise OptionError(f"{name} has {len(values)} values; the input has {channels} channels")
    return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()


# --- the pixel work ------------------------------------------------------------------------------
def open_image(path: Union[str, Path], min_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Decode fully now (PIL is lazy), so corrupt and truncated files fail here, as DataError.

    min_size (W, H): a JPEG much larger than that is decoded at a reduced scale (1/2, 1/4 or 1/8, by
    libjpeg's DCT scaling, still at least min_size) before it is resized: a camera photo decodes ~10x
    faster, and decoding would otherwise bound the throughput on a small machine.
    """
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft(img.mode, min_size)
            img.load()
            return img.copy() if img.mode not in ("P", "PA") else img.convert("RGBA")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    except MemoryError:  # a small file may declare a picture larger than memory; it is one bad image
        raise DataError(f"{path}: cannot decode image (it does not fit in memory)") from None


def is_grayscale(img: Image.Image) -> bool:
    return img.mode in ("L", "LA", "I", "I;16", "F", "1")


def _resize(img: Image.Image, height: int, width: int, mode: str) -> Image.Image:
    if mode == "stretch" or img.size == (width, height):
        return img.resize((width, height), Image.BILINEAR)
    src_w, src_h = img.size
    if mode == "crop":  # scale to cover, centre crop
        scale = max(width / src_w, height / src_h)
        new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return img.crop((left, top, left + width, top + height))
    scale = min(width / src_w, height / src_h)  # letterbox: fit inside, pad evenly
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    fill = LETTERBOX_FILL if img.mode == "L" else (LETTERBOX_FILL,) * 3
    canvas = Image.new(img.mode, (width, height), fill)
    canvas.paste(img.resize((new_w, new_h), Image.BILINEAR), ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def preprocess_pil(img: Image.Image, plan: ImagePlan) -> np.ndarray:
    """One sample (no batch dim), float32, in the plan's layout."""
    img = img.convert("L" if plan.channels == 1 else "RGB")
    img = _resize(img, plan.height, plan.width, plan.config.resize)
    hwc = np.asarray(img, dtype=np.float32).reshape(plan.height, plan.width, plan.channels)
    if plan.config.color == "BGR":
        hwc = hwc[:, :, ::-1]
    hwc = (hwc - plan.mean) / plan.std
    chw_or_hwc = hwc.transpose(2, 0, 1) if plan.layout == "NCHW" else hwc
    return np.ascontiguousarray(chw_or_hwc, dtype=np.float32)


def preprocess_image(path_or_pil: Union[str, Path, Image.Image], config: PreprocessConfig,
                     input_spec: InputSpec) -> np.ndarray:
    """Decode (if a path) and preprocess one image for input_spec: float32, without the batch dim."""
    plan = plan_for(input_spec, config)
    img = path_or_pil if isinstance(path_or_pil, Image.Image) else \
        open_image(path_or_pil, (plan.width, plan.height))
    return preprocess_pil(img, plan)
