"""Option sets used by more than one command, each defined once (after Polygraphy's argument groups).

- preprocessing: --size --resize --mean --std --color --layout --config  (-> the library's `preprocess`)
- run: --batch-size --limit --seed --threads --device                    (-> the library's run options)
- calibration algorithm: --algo --percentile (choices from ptqengine.algorithms' registry)
- outputs: -o / --trt-version / --trt-calibrator (TensorRT cache), --scales-json, --save-stats, --quiet
- --data-loader-script beside --data (`with_data_loader_script`): Polygraphy's data loader script
A group joins a command in one decorator (`with_option_group`): the CLI shows its options, the command
receives their parsed result as one argument. Bad values raise OptionError naming the option, which the
app prints as one line with exit code 2.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import typer

from ptqengine.algorithms import ALGORITHMS, AUTO, SYMMETRIC_METHODS
from ptqengine.atomic import atomic_group, output_kind
from ptqengine.errors import OptionError, PtqError
from ptqengine.formats.trt_cache import DEFAULT_VERSION, calibrator_class, trt_version_code
from ptqengine.images import ARRAY_SUFFIXES
from ptqengine.metrics import METRICS
from ptqengine.preprocess import COLORS, LAYOUTS, RESIZE_MODES, parse_floats, parse_size

from .console import Outputs

if TYPE_CHECKING:  # pragma: no cover
    from ptqengine.preprocess import PreprocessConfig
    from ptqengine.result import CalibrationResult


PREPROCESS = "Preprocessing"
RUN = "Run"
ALGORITHM = "Calibration algorithm"
OUTPUT = "Output"


def choices(name: str, values: Any) -> type:
    """A str Enum of the values (typer shows them as the option's choices)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


# --- option groups ---------------------------------------------------------------------------------
def with_option_group(target: str, group: Mapping[str, Tuple[Any, Any]], parse: Callable[..., Any]):
    """Give a command an option group in one line: `group` maps parameter names to (Annotated type, default);
    the command receives parse(**values) as its `target` argument."""

    def decorate(command):
        # Evaluated annotations: typer reads Annotated[..., typer.Option(...)] from the signature itself.
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != target]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for name, (annotation, default) in group.items()]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name, default) for name, (_, default) in group.items()}
            return command(*args, **{target: parse(**values)}, **kwargs)

        run.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        return run

    return decorate


# --- preprocessing ---------------------------------------------------------------------------------
Resize = choices("Resize", RESIZE_MODES)
Color = choices("Color", COLORS)
Layout = choices("Layout", LAYOUTS)

PREPROCESS_OPTIONS = {
    "size": (Annotated[Optional[str], typer.Option(
        "--size", metavar="H,W", rich_help_panel=PREPROCESS,
        help="Resize images to H,W (default: the model's input size).")], None),
    "resize": (Annotated[Optional[Resize], typer.Option(
        "--resize", case_sensitive=False, rich_help_panel=PREPROCESS,
        help="How to fit images to the size (default: stretch).")], None),
    "mean": (Annotated[Optional[str], typer.Option(
        "--mean", metavar="M1,M2,M3", rich_help_panel=PREPROCESS,
        help="Per-channel mean in 0-255 units, subtracted after resize: (pixel - mean) / std.")], None),
    "std": (Annotated[Optional[str], typer.Option(
        "--std", metavar="S1,S2,S3", rich_help_panel=PREPROCESS, help="Per-channel std in 0-255 units.")], None),
    "color": (Annotated[Optional[Color], typer.Option(
        "--color", case_sensitive=False, rich_help_panel=PREPROCESS,
        help="Channel order the model expects (default: RGB).")], None),
    "layout": (Annotated[Optional[Layout], typer.Option(
        "--layout", case_sensitive=False, rich_help_panel=PREPROCESS,
        help="Input layout (default: guessed from the model).")], None),
    "config": (Annotated[Optional[Path], typer.Option(
        "--config", metavar="YAML", rich_help_panel=PREPROCESS,
        help="Preprocessing YAML (same keys as these options; 'inputs: {name: {...}}' per input). Options "
             "given on the command line override it.")], None),
}


def preprocess_config(size: Optional[str] = None, resize: Optional[Enum] = None, mean: Optional[str] = None,
                      std: Optional[str] = None, color: Optional[Enum] = None, layout: Optional[Enum] = None,
                      config: Optional[Path] = None
                      ) -> Union["PreprocessConfig", Dict[str, "PreprocessConfig"], None]:
    """What the library's `preprocess` takes: None (model defaults), one config, or per-input configs."""
    from ptqengine.preprocess import PreprocessConfig, load_preprocess_config

    given: Dict[str, Any] = {
        "size": parse_size(size, "--size"), "resize": resize.value if resize else None,
        "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std", nonzero=True),
        "color": color.value if color else None, "layout": layout.value if layout else None,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if config is not None:
        return {name: dataclasses.replace(cfg, **given) for name, cfg in load_preprocess_config(config).items()}
    return PreprocessConfig(**given) if given else None


with_preprocess_options = with_option_group("preprocess", PREPROCESS_OPTIONS, preprocess_config)


# --- run options ------------------------------------------------------------------------------------
RUN_OPTIONS = {
    "batch_size": (Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=RUN,
                                               help="Samples per inference call.")], 8),
    "limit": (Annotated[Optional[int], typer.Option("--limit", min=1, rich_help_panel=RUN,
                                                    help="Use at most N samples (a seeded random subset).")], None),
    "seed": (Annotated[int, typer.Option("--seed", rich_help_panel=RUN, help="Seed of the sample subsets.")], 0),
    "threads": (Annotated[Optional[int], typer.Option("--threads", min=1, rich_help_panel=RUN,
                                                      help="CPU threads (default: all cores).")], None),
    "device": (Annotated[str, typer.Option(
        "--device", metavar="cpu|cuda[:N]", rich_help_panel=RUN,
        help="Where the model runs and statistics are counted (cuda: onnxruntime-gpu and CuPy, "
             "pip install \".[gpu]\").")], "cpu"),
}


def with_run_options(*names: str):
    """The run options `names` (keys of RUN_OPTIONS), received as one dict `run` of library keywords."""
    group = {name: RUN_OPTIONS[name] for name in names}

    def parse(**values: Any) -> Dict[str, Any]:
        if "device" in values:
            from ptqengine.collect import parse_device

            values["device"] = parse_device(values["device"])
        return values

    return with_option_group("run", group, parse)


# --- data from a loader script (Polygraphy's --data-loader-script) -------------------------------
LoaderScriptOpt = Annotated[Optional[str], typer.Option(
    "--data-loader-script", metavar="SCRIPT.py[:FUNC]", rich_help_panel=RUN,
    help="Instead of --data: a Python script whose no-argument function (default load_data) returns or yields "
         "feed dicts {input name: array}, the script Polygraphy's --data-loader-script takes. Its arrays are "
         "the model's input: the preprocessing options do not apply.")]


_PREPROCESSING = "--size/--resize/--mean/--std/--color/--layout/--config"  # what data given as model input skips


def with_data_loader_script(command):
    """--data-loader-script beside the command's --data, in one line: the command's `data` receives a
    ptqengine.LoaderScript in its place. The two are exclusive; a `data` without a default is then
    required as 'one of the two'. Put it under with_preprocess_options: preprocessing is refused with it."""
    signature = inspect.signature(command, eval_str=True)
    required = signature.parameters["data"].default is inspect.Parameter.empty
    # Keyword-only (typer passes every value by name), so `data` may take a default before required ones.
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, **({"default": None} if name == "data" else {}))
              for name, p in signature.parameters.items()]
    params.append(inspect.Parameter("data_loader_script", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=LoaderScriptOpt))

    @functools.wraps(command)
    def run(*args: Any, data_loader_script: Optional[str] = None, **kwargs: Any) -> Any:
        if data_loader_script is not None:
            if kwargs.get("data") is not None:
                raise OptionError("--data and --data-loader-script are exclusive: give one")
            if kwargs.get("preprocess") is not None:
                raise OptionError(f"--data-loader-script gives model input as is: {_PREPROCESSING} do not apply "
                                  "(normalise in the script)")
            from ptqengine.loader_script import LoaderScript

            kwargs["data"] = LoaderScript.parse(data_loader_script)
        elif required and kwargs.get("data") is None:
            raise OptionError("give --data or --data-loader-script")
        elif kwargs.get("preprocess") is not None and Path(str(kwargs["data"])).suffix.lower() in ARRAY_SUFFIXES:
            raise OptionError(f"--data {kwargs['data']}: arrays are model input as is: {_PREPROCESSING} do not "
                              "apply (normalise the arrays beforehand)")
        return command(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return run


# --- calibration algorithm -------------------------------------------------------------------------
Algo = choices("Algo", (*SYMMETRIC_METHODS, AUTO))
SavedStatsAlgo = choices("SavedStatsAlgo", SYMMETRIC_METHODS)  # auto needs samples, not only statistics
Metric = choices("Metric", METRICS)
_ALGO_HELP = "; ".join(f"{n}: {ALGORITHMS[n].summary}" for n in SYMMETRIC_METHODS)

AlgoOpt = Annotated[Algo, typer.Option(
    "--algo", case_sensitive=False, rich_help_panel=ALGORITHM,
    help=f"{_ALGO_HELP}; auto: per tensor, the one that minimises the model's output error on 32 --data samples.")]
# calibrate and quantize: no --algo = per tensor the candidate range (these algorithms') that its quantised
# layers reproduce best on --data samples, for the Q/DQ model (ptqengine.qdq.local) and the TensorRT cache
# (ptqengine.qdq.trt_implicit) alike. An explicit --algo gives exactly that algorithm's ranges everywhere.
DefaultAlgoOpt = Annotated[Optional[Algo], typer.Option(
    "--algo", case_sensitive=False, rich_help_panel=ALGORITHM,
    help=f"{_ALGO_HELP}; auto: per tensor, the one that minimises the model's output error on 32 --data "
         "samples. Not given: per tensor, the candidate range (entropy, max, percentile, mse, the op's bound) "
         "its quantised layers reproduce best on 32 --data samples, for the TensorRT cache (under TensorRT's "
         "own per-channel max weights) and the Q/DQ model alike; entropy alone is exactly TensorRT's "
         "EntropyCalibration2.")]
SavedStatsAlgoOpt = Annotated[SavedStatsAlgo, typer.Option(
    "--algo", case_sensitive=False, rich_help_panel=ALGORITHM, help=_ALGO_HELP + ".")]
# No min/max here: click shows them as [0.0<=x<=100.0], but 0 is no percentile; algorithm_options checks.
PercentileOpt = Annotated[Optional[float], typer.Option(
    "--percentile", metavar="(0, 100]", rich_help_panel=ALGORITHM,
    help="Percentile for --algo percentile (default: 99.99).")]


TargetCosineOpt = Annotated[float, typer.Option(
    "--target-cosine", min=0.0, max=1.0, rich_help_panel=RUN,
    help="Good enough: every output's cosine to FP32 at least this, and (outputs with classes) top-1 / sequence "
         "agreement at least 95%. analyze's advice aims at it, evaluate's verdict checks it.")]


def algorithm_options(algo: Optional[Enum], percentile: Optional[float]) -> Tuple[Optional[str], Dict[str, Any]]:
    """(algorithm name or None, options) for the library; options not used by the algorithm are refused."""
    if algo is None:
        if percentile is not None:
            raise OptionError("--percentile is only used by --algo percentile")
        return None, {}
    if algo.value == "percentile":
        if percentile is not None and not 0.0 < percentile <= 100.0:  # NaN fails too
            raise OptionError(f"--percentile must be in (0, 100], got {percentile:g}")
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
    qdq_args: Optional[Dict[str, Any]] = None  # ptqengine.api.export_qdq's keywords (data, choose_ranges, run)

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
        with atomic_group():  # one run's outputs are replaced together, or none is (a later write may fail)
            return self._write(result)

    def _write(self, result: "CalibrationResult") -> Tuple[Outputs, List[str]]:
        from ptqengine.formats import write_scales_json

        outputs: Outputs = []
        warnings: List[str] = []
        if self.stats is not None:
            result.save_stats(self.stats)
            outputs.append(("statistics", self.stats))
        if self.cache is not None:
            warnings += result.write_trt_cache(self.cache, self.trt_version, self.trt_calibrator)
            header = f"TRT-{trt_version_code(self.trt_version)}-{calibrator_class(self.trt_calibrator)}"
            outputs.append((f"TensorRT cache ({header})", self.cache))
        if self.scales_json is not None:
            write_scales_json(self.scales_json, result)
            outputs.append(("scales JSON", self.scales_json))
        if self.qdq is not None:
            from ptqengine.api import export_qdq

            quantized = export_qdq(self.model, self.qdq, result, **(self.qdq_args or {}))
            warnings += quantized.report.notes
            outputs.append(("Q/DQ model", self.qdq))
        return outputs, warnings


def check_writable(path: Path, option: str) -> None:
    """The file's directory must exist and be writable, and the path must be a new name, a regular file, or
    a character device / FIFO (written through; see ptqengine.atomic)."""
    directory = path.parent
    if path.is_dir():
        raise OptionError(f"{option}: {path} is a directory, expected a file name")
    try:
        output_kind(path)
    except PtqError as exc:
        raise OptionError(f"{option}: {exc}") from None
    if directory.exists() and not directory.is_dir():
        raise OptionError(f"{option}: {directory} is not a directory")
    if not directory.is_dir():
        raise OptionError(f"{option}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OptionError(f"{option}: output directory {directory} is not writable")
