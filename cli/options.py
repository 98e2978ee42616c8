"""Option sets used by more than one command, each defined once (after Polygraphy's argument groups).

- preprocessing: --size --resize --mean --std --color --layout --config
- calibration algorithm: --algo --percentile
- outputs: -o / --trt-version / --trt-calibrator (TensorRT cache), --scales-json, --save-stats, --quiet
Each set has its Annotated option types (used in the command signatures) and one function turning the
parsed values into what the library takes. Bad values raise OptionError naming the option, which the
app prints as one line with exit code 2.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Dict, List, Optional, Tuple, Union

import typer

from ptqengine.errors import OptionError
from ptqengine.formats.trt_cache import DEFAULT_VERSION, calibrator_class, trt_version_code

from .console import Outputs

if TYPE_CHECKING:  # pragma: no cover
    from ptqengine.pipeline import CalibrationResult
    from ptqengine.preprocess import PreprocessConfig


PREPROCESS = "Preprocessing"
ALGORITHM = "Calibration algorithm"
OUTPUT = "Output"


# --- preprocessing ---------------------------------------------------------------------------------
class Resize(str, Enum):
    stretch = "stretch"
    crop = "crop"
    letterbox = "letterbox"


class Color(str, Enum):
    RGB = "RGB"
    BGR = "BGR"
    GRAY = "GRAY"


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


SizeOpt = Annotated[Optional[str], typer.Option(
    "--size", metavar="H,W", rich_help_panel=PREPROCESS, help="Resize images to H,W (default: the model's input size).")]
ResizeOpt = Annotated[Optional[Resize], typer.Option(
    "--resize", case_sensitive=False, rich_help_panel=PREPROCESS, help="How to fit images to the size (default: stretch).")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", metavar="M1,M2,M3", rich_help_panel=PREPROCESS,
    help="Per-channel mean in 0-255 units, subtracted after resize: (pixel - mean) / std.")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", metavar="S1,S2,S3", rich_help_panel=PREPROCESS, help="Per-channel std in 0-255 units.")]
ColorOpt = Annotated[Optional[Color], typer.Option(
    "--color", case_sensitive=False, rich_help_panel=PREPROCESS, help="Channel order the model expects (default: RGB).")]
LayoutOpt = Annotated[Optional[Layout], typer.Option(
    "--layout", case_sensitive=False, rich_help_panel=PREPROCESS, help="Input layout (default: guessed from the model).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", metavar="YAML", rich_help_panel=PREPROCESS,
    help="Preprocessing YAML (same keys as these options; 'inputs: {name: {...}}' per input). Options given "
         "on the command line override it.")]


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """'224,224' or '224x224' -> (224, 224)."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise OptionError(f"--size: expected H,W (two positive integers, e.g. 224,224), got {text!r}") from None
    if height < 1 or width < 1:
        raise OptionError(f"--size: H and W must be positive, got {text!r}")
    return height, width


def parse_floats(text: Optional[str], option: str, nonzero: bool = False) -> Optional[Tuple[float, ...]]:
    """'123.675,116.28,103.53' -> a tuple; one value or one per channel."""
    if text is None:
        return None
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise OptionError(f"{option}: expected comma-separated numbers (e.g. 123.675,116.28,103.53), "
                          f"got {text!r}") from None
    if nonzero and any(v == 0 for v in values):
        raise OptionError(f"{option}: values must not be 0, got {text!r}")
    return values


def preprocess_config(size: Optional[str] = None, resize: Optional[Resize] = None, mean: Optional[str] = None,
                      std: Optional[str] = None, color: Optional[Color] = None, layout: Optional[Layout] = None,
                      config: Optional[Path] = None
                      ) -> Union["PreprocessConfig", Dict[str, "PreprocessConfig"], None]:
    """What pipeline.calibrate takes: None (model defaults), one config, or per-input configs from YAML."""
    from ptqengine.preprocess import PreprocessConfig, load_preprocess_config

    given: Dict[str, Any] = {
        "size": parse_size(size), "resize": resize.value if resize else None,
        "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std", nonzero=True),
        "color": color.value if color else None, "layout": layout.value if layout else None,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if config is not None:
        return {name: dataclasses.replace(cfg, **given) for name, cfg in load_preprocess_config(config).items()}
    return PreprocessConfig(**given) if given else None


# --- run options shared by the commands that run the model on calibration data --------------------
RUN = "Calibration run"
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=RUN,
                                           help="Samples per inference call.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, rich_help_panel=RUN,
                                                 help="Use at most N samples (a seeded random subset).")]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel=RUN, help="Seed of the --limit subset.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, rich_help_panel=RUN,
                                                   help="CPU threads (default: all cores).")]


PREPROCESS_OPTIONS = {"size": SizeOpt, "resize": ResizeOpt, "mean": MeanOpt, "std": StdOpt,
                      "color": ColorOpt, "layout": LayoutOpt, "config": ConfigOpt}


def with_preprocess_options(command):
    """Give a command the preprocessing option set in one line: the CLI shows the seven options, and
    the command receives their parsed result as its `preprocess` argument (see preprocess_config)."""
    # Evaluated annotations: typer reads Annotated[..., typer.Option(...)] from the signature itself.
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "preprocess"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
             for name, annotation in PREPROCESS_OPTIONS.items()]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in PREPROCESS_OPTIONS}
        return command(*args, preprocess=preprocess_config(**values), **kwargs)

    run.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    return run


# --- calibration algorithm -------------------------------------------------------------------------
class Algo(str, Enum):
    entropy = "entropy"
    max = "max"
    percentile = "percentile"
    mse = "mse"
    auto = "auto"


AlgoOpt = Annotated[Algo, typer.Option(
    "--algo", case_sensitive=False, rich_help_panel=ALGORITHM,
    help="entropy: TensorRT's minimum-KL (EntropyCalibration2); max: absolute maximum; "
         "percentile: percentile of |x|; mse: minimum quantisation error; auto: per tensor, the one that "
         "minimises the model's output error on 32 --data samples (calibrate, quantize).")]
# quantize and calibrate: no --algo = per tensor, chosen by each quantised layer's own output error on --data
# samples (ptqengine.qdq.local); an explicit --algo gives exactly that algorithm's ranges.
LOCAL_CHOICE_HELP = (" Not given: the Q/DQ model takes, per tensor, the range (among these algorithms') whose "
                     "quantised layers' own output error is least on --data samples; the TensorRT cache uses entropy.")
DefaultAlgoOpt = Annotated[Optional[Algo], typer.Option(
    "--algo", case_sensitive=False, rich_help_panel=ALGORITHM,
    help="entropy: TensorRT's minimum-KL (EntropyCalibration2); max: absolute maximum; percentile: percentile "
         "of |x|; mse: minimum quantisation error; auto: per tensor, the one that minimises the model's output "
         "error on 32 --data samples." + LOCAL_CHOICE_HELP)]
PercentileOpt = Annotated[Optional[float], typer.Option(
    "--percentile", min=0.0, max=100.0, rich_help_panel=ALGORITHM,
    help="Percentile for --algo percentile (default: 99.99).")]


def algorithm_options(algo: Algo, percentile: Optional[float]) -> Tuple[str, Dict[str, Any]]:
    """(algorithm name, options) for the library; options not used by the algorithm are refused."""
    if algo is Algo.percentile:
        return algo.value, ({} if percentile is None else {"percentile": percentile})
    if percentile is not None:
        raise OptionError(f"--percentile is only used by --algo percentile (got --algo {algo.value})")
    return algo.value, {}


# --- outputs ---------------------------------------------------------------------------------------
TrtVersionOpt = Annotated[str, typer.Option(
    "--trt-version", rich_help_panel=OUTPUT,
    help="TensorRT version that will read the cache (10.3.0 = JetPack 6); the header must match it.")]
TrtCalibratorOpt = Annotated[str, typer.Option(
    "--trt-calibrator", rich_help_panel=OUTPUT,
    help="Calibrator class your TensorRT pipeline uses: entropy2 (IInt8EntropyCalibrator2) or minmax "
         "(IInt8MinMaxCalibrator). It only sets the header; --algo computes the scales.")]
ScalesJsonOpt = Annotated[Optional[Path], typer.Option(
    "--scales-json", metavar="PATH", rich_help_panel=OUTPUT, help="Also write ranges and statistics as JSON.")]
SaveStatsOpt = Annotated[Optional[Path], typer.Option(
    "--save-stats", metavar="PATH", rich_help_panel=OUTPUT,
    help="Save the collected statistics (.ptqs) for 'ptqengine export' with other algorithms.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUTPUT, help="No progress bar or summary (warnings and errors still go to stderr).")]
DEFAULT_TRT_VERSION = DEFAULT_VERSION


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Where the results go; checked before any work so a typo does not cost a calibration run."""

    cache: Optional[Path]
    trt_version: str = DEFAULT_VERSION
    trt_calibrator: str = "entropy2"
    scales_json: Optional[Path] = None
    stats: Optional[Path] = None
    qdq: Optional[Path] = None  # Q/DQ model of `model` with the calibrated ranges (TensorRT 11, onnxruntime)
    model: Optional[Path] = None
    qdq_samples: Optional[list] = None  # calibration batches for the Q/DQ export's data-driven methods
    qdq_accuracy: Any = None  # ptqengine.qdq.AccuracyOptions, None = its defaults

    def check(self) -> "OutputPlan":
        if self.cache is not None:
            trt_version_code(self.trt_version)
            calibrator_class(self.trt_calibrator)
        for option, path in (("-o", self.cache), ("--scales-json", self.scales_json), ("--save-stats", self.stats),
                             ("--qdq", self.qdq)):
            if path is not None:
                check_writable(path, option)
        return self

    def write(self, result: "CalibrationResult") -> Tuple[Outputs, List[str]]:
        """Write every requested file; returns (what, where) pairs and the writers' warnings."""
        from ptqengine.formats import write_scales_json, write_trt_cache

        outputs: Outputs = []
        warnings: List[str] = []
        if self.stats is not None:  # first: if a later write fails, `export` can still recover the run
            result.save_stats(self.stats)
            outputs.append(("statistics", self.stats))
        if self.cache is not None:
            warnings += write_trt_cache(self.cache, result.amax, self.trt_version, self.trt_calibrator)
            header = f"TRT-{trt_version_code(self.trt_version)}-{calibrator_class(self.trt_calibrator)}"
            outputs.append((f"TensorRT cache ({header})", self.cache))
        if self.scales_json is not None:
            write_scales_json(self.scales_json, result)
            outputs.append(("scales JSON", self.scales_json))
        if self.qdq is not None:
            from ptqengine.qdq import quantize_model

            quantized = quantize_model(self.model, self.qdq, calibration=result, samples=self.qdq_samples,
                                       accuracy=self.qdq_accuracy)
            warnings += quantized.report.notes
            outputs.append(("Q/DQ model", self.qdq))
        return outputs, warnings


def check_writable(path: Path, option: str) -> None:
    """The file's directory must exist and be writable, and the path must not be a directory."""
    directory = path.parent
    if path.is_dir():
        raise OptionError(f"{option}: {path} is a directory, expected a file name")
    if directory.exists() and not directory.is_dir():
        raise OptionError(f"{option}: {directory} is not a directory")
    if not directory.is_dir():
        raise OptionError(f"{option}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OptionError(f"{option}: output directory {directory} is not writable")
