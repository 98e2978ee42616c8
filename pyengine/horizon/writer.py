"""Write a Horizon PTQ kit: config.yaml, quant_config.json, calibration data, ptq_summary.md.

Key order is fixed and PyYAML writes with sort_keys=False, so equal inputs give equal bytes; paths in
config.yaml are relative to the output directory (run the converter from inside it). The output
directory policy: created when missing; reused when empty or when it holds a previous horizon output
(its ptq_summary.md starts with SUMMARY_TITLE), in which case our calibration directories are replaced
as a whole, so no stale sample survives; any other non-empty directory is refused unless force=True,
and then only the files and directories we write are replaced.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import yaml

from ..collect import CPU, Device, RunOptions
from ..collect.statistics import statistics_for
from ..atomic import write_text_atomic
from ..errors import DataError, OptionError
from ..datasource import open_source
from ..images import image_files, sample_files
from ..loader_script import LoaderScript
from ..model import info_from_model, load_model
from ..preprocess import PreprocessConfig, plans_for
from ..statsfile import StatsBundle
from . import choices as ch
from .calibdata import (HorizonInput, feature_inputs, horizon_inputs, safe_name, write_calibration_data,
                        write_feature_data)
from .graph import producers, resolve_nodes
from .schema import INPUT_TYPES_RT, NASH, SPECS, TARGETS, validate_config, validate_quant_config
from .summary import SUMMARY_NAME, SUMMARY_TITLE, norm_values, summary_markdown

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
CONFIG_NAME = "config.yaml"
QUANT_CONFIG_NAME = "quant_config.json"


def march_for(target: str) -> str:
    """X3/J3 -> bernoulli2, J5 -> bayes, X5 -> bayes-e, J6E/S100 -> nash-e, J6M/S100P -> nash-m, J6P/S600 -> nash-p."""
    march = TARGETS.get(str(target).upper())
    if march is None:
        raise OptionError(f"--target {target!r} is not a Horizon target; valid: {', '.join(TARGETS)}")
    return march


@dataclass
class HorizonResult:
    out_dir: Path
    march: str
    files: List[Path]
    samples: int
    calibration: ch.CalibrationChoice
    asymmetric: ch.Decision
    per_channel: ch.Decision
    int16: ch.Decision
    int16_nodes: List[str]
    cpu_nodes: List[str]
    notes: List[str] = field(default_factory=list)


# --- output directory ---------------------------------------------------------------------------
def _is_previous_output(out_dir: Path) -> bool:
    summary = out_dir / SUMMARY_NAME
    try:
        with open(summary, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == SUMMARY_TITLE
    except OSError:
        return False


def prepare_output_dir(out_dir: PathLike, force: bool = False) -> Path:
    out = Path(out_dir)
    if out.is_symlink():  # as for file outputs: whoever planted the link would choose where we write
        raise OptionError(f"-o {out}: is a symbolic link; refused as an output directory (give the directory itself)")
    if out.exists() and not out.is_dir():
        raise OptionError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_previous_output(out) and not force:
        raise OptionError(f"-o {out}: directory is not empty and holds no previous horizon output "
                          "(give --force to write into it anyway)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"-o {out}: cannot create directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OptionError(f"-o {out}: directory is not writable")
    return out


def _remove_stale_calibration(out_dir: Path, keep: Sequence[str]) -> None:
    """A previous horizon output's calibration directories that this run does not rewrite."""
    if not _is_previous_output(out_dir):
        return
    for path in out_dir.glob("calibration_data*_f32"):
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)


# --- the values ---------------------------------------------------------------------------------
def _input_type_rt(hin: HorizonInput, requested: Optional[str]) -> str:
    p = hin.plan
    if hin.featuremap:
        if requested not in (None, "featuremap"):
            raise OptionError(f"--input-type-rt {requested}: loader-script data is a feature map (the model's "
                              "input as is); Horizon then takes featuremap at run time too")
        return "featuremap"
    if requested is not None:
        if requested not in INPUT_TYPES_RT:
            raise OptionError(f"--input-type-rt {requested!r}: valid are {', '.join(sorted(INPUT_TYPES_RT))}")
        if requested in ("nv12", "yuv444") and (p.height % 2 or p.width % 2):
            raise OptionError(f"--input-type-rt {requested}: input {hin.name!r} is {p.height}x{p.width}; "
                              "nv12/yuv444 need even height and width")
        return requested
    if p.channels == 1:
        return "gray"
    return "nv12" if p.height % 2 == 0 and p.width % 2 == 0 else p.config.color.lower()


def _joined(values: Sequence[Optional[str]]) -> Optional[str]:
    if all(v is None for v in values):
        return None
    return ";".join("None" if v is None else v for v in values)


def input_parameters(inputs: Sequence[HorizonInput], input_type_rt: Optional[str]) -> Dict[str, Any]:
    norms = [norm_values(h) for h in inputs]
    rts = [_input_type_rt(h, input_type_rt) for h in inputs]
    params: Dict[str, Any] = {
        "input_name": ";".join(h.name for h in inputs),
        "input_type_train": ";".join(h.train_type for h in inputs),
        "input_layout_train": ";".join(h.plan.layout for h in inputs),
        "input_type_rt": ";".join(rts),
    }
    if any(rt not in ("nv12",) for rt in rts):
        params["input_layout_rt"] = ";".join(h.plan.layout for h in inputs)
    params["input_shape"] = ";".join("x".join(str(d) for d in h.shape) for h in inputs)
    params["norm_type"] = ";".join(n["norm_type"] for n in norms)
    for key in ("mean_value", "scale_value"):
        value = _joined([n[key] for n in norms])
        if value is not None:
            params[key] = value
    return params


def build_config(march: str, model_rel: str, prefix: str, inputs: Sequence[HorizonInput],
                 choice: ch.CalibrationChoice, per_channel: bool, int16_nodes: Sequence[str],
                 cpu_nodes: Sequence[str], input_type_rt: Optional[str] = None) -> Dict[str, Any]:
    """config.yaml as a dict, keys in the order Horizon's templates use."""
    nash = march in NASH
    model: Dict[str, Any] = {"onnx_model": model_rel, "march": march, "working_dir": "model_output",
                             "output_model_file_prefix": prefix}
    node_info: Dict[str, Dict[str, str]] = {}
    if not nash and march != "bernoulli2":  # J5 / X5: node_info; J6 puts them in quant_config.json
        for node in int16_nodes:
            node_info[node] = {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}
        for node in cpu_nodes:
            node_info[node] = {"ON": "CPU"}
    if node_info:
        model["node_info"] = node_info
    cal: Dict[str, Any] = {"cal_data_dir": ";".join(h.directory for h in inputs), "cal_data_type": "float32"}
    if nash:
        cal["quant_config"] = QUANT_CONFIG_NAME
    else:
        cal["calibration_type"] = choice.calibration_type
        if choice.calibration_type == "max":
            cal["max_percentile"] = choice.max_percentile
        cal["per_channel"] = bool(per_channel)
        if march == "bernoulli2" and cpu_nodes:
            cal["run_on_cpu"] = ";".join(cpu_nodes)
    compiler: Dict[str, Any] = {"compile_mode": "latency", "debug": False,
                                "optimize_level": "O2" if nash else "O3"}
    if 1 in SPECS[march]["core_num"] and "core_num" in SPECS[march]["keys"]["compiler_parameters"]:
        compiler["core_num"] = 1
    return {"model_parameters": model, "input_parameters": input_parameters(inputs, input_type_rt),
            "calibration_parameters": cal, "compiler_parameters": compiler}


def build_quant_config(march: str, choice: ch.CalibrationChoice, asymmetric: bool, per_channel: bool,
                       int16_nodes: Sequence[str], cpu_nodes: Sequence[str]) -> Dict[str, Any]:
    activation: Dict[str, Any] = {"calibration_type": choice.calibration_type}
    if choice.calibration_type == "max":
        activation["max_percentile"] = choice.max_percentile
    activation["per_channel"] = bool(per_channel)
    activation["asymmetric"] = bool(asymmetric)
    qc: Dict[str, Any] = {"model_config": {"all_node_type": "int8", "activation": activation}}
    nodes: Dict[str, Dict[str, str]] = {n: {"qtype": "int16"} for n in int16_nodes}
    nodes.update({n: {"ON": "CPU"} for n in cpu_nodes})
    if nodes:
        qc["node_config"] = nodes
    return qc


def dump_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)


def dump_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# --- statistics ---------------------------------------------------------------------------------
def channel_ratios(bundle: StatsBundle) -> Dict[str, float]:
    """Widest / median channel absmax of every tensor whose statistics have per-channel ranges."""
    ratios = {}
    for name, stats in bundle.tensors.items():
        if stats.axis is None:
            continue
        absmax = np.fmax(np.abs(stats.channel_min), np.abs(stats.channel_max))
        ratio = ch.channel_ratio(np.nan_to_num(absmax, nan=0.0))
        if ratio is not None:
            ratios[name] = ratio
    return ratios


# --- the whole thing ------------------------------------------------------------------------------
def write_horizon_config(model: PathLike, data: Union[PathLike, LoaderScript], target: str, out_dir: PathLike, *,
                         preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None] = None,
                         stats: Optional[PathLike] = None, samples: int = 100, seed: int = 0,
                         int16: Sequence[str] = (), cpu: Sequence[str] = (), input_type_rt: Optional[str] = None,
                         force: bool = False, threads: Optional[int] = None, device: Union[str, Device] = CPU,
                         progress: Optional[Progress] = None) -> HorizonResult:
    """Calibration data, config.yaml, quant_config.json (not for X3/J3) and ptq_summary.md in out_dir.

    Statistics: `stats` (a .ptqs from `calibrate --save-stats`) or, without it, a `calibrate` run on the
    same seeded sample of `data` with the same preprocessing.
    """
    march = march_for(target)
    if samples < 1:
        raise OptionError(f"--samples must be >= 1, got {samples}")
    out = prepare_output_dir(out_dir, force)
    model_path = Path(model)
    proto = load_model(model_path, load_external_data=False)
    info = info_from_model(proto, model_path)
    int16_nodes = resolve_nodes(int16, proto, "--int16")
    cpu_nodes = resolve_nodes(cpu, proto, "--cpu")
    both = sorted(set(int16_nodes) & set(cpu_nodes))
    if both:
        raise OptionError(f"node {both[0]!r} is given to both --int16 and --cpu")
    if int16_nodes and march == "bernoulli2":
        raise OptionError(f"--int16: target {target} (bernoulli2) computes in int8 only; use --cpu for these nodes")
    features: List[Mapping[str, np.ndarray]] = []
    if isinstance(data, LoaderScript):  # the model's input as is: a feature map, the first `samples` of it
        source = open_source(data, info.inputs, list, limit=samples, seed=seed, strict=True, workers=1, depth=1)
        features = [sample for _, sample in source.samples()]
        inputs, images = feature_inputs(info.inputs, features[0]), []
    else:
        plans = plans_for(info.inputs, preprocess)
        inputs = horizon_inputs(info.inputs, plans)
        images = sample_files(image_files(data)[1], samples, seed)  # a directory or a list file
        if not images:
            raise DataError(f"{data}: no images found (Horizon calibration data is written from images)")

    notes: List[str] = []
    graph_inputs = {s.name for s in info.inputs}

    def per_channel_nchw(name: str, rank: int) -> Optional[int]:
        """Per-channel ranges of 4-D activations (channel axis 1, ONNX's NCHW): the per_channel decision."""
        return 1 if rank == 4 and name not in graph_inputs else None

    options = RunOptions(limit=samples, seed=seed, threads=threads, preprocess=preprocess, device=device)
    bundle = statistics_for(model_path, data if features else Path(data), stats, options, notes=notes, progress=progress,
                            axis_policy=per_channel_nchw)
    made_by = producers(proto)
    facts = ch.tensor_facts(bundle, made_by, channel_ratios(bundle), threads)
    choice = ch.choose_calibration(facts)
    asym = ch.choose_asymmetric(facts)
    per_channel = ch.choose_per_channel(facts)
    wide = ch.choose_int16(facts, choice)
    unnamed = [t for t in wide.tensors if made_by.get(t, (None,))[0] is None]
    auto_int16 = [] if march == "bernoulli2" else \
        [made_by[t][0] for t in wide.tensors if made_by.get(t, (None,))[0] is not None]
    all_int16 = [n for n in dict.fromkeys(list(int16_nodes) + auto_int16) if n not in cpu_nodes]

    model_rel = os.path.relpath(model_path.resolve(), out.resolve())
    prefix = safe_name(f"{model_path.stem}_{march}")
    config = build_config(march, model_rel, prefix, inputs, choice, per_channel.value, all_int16, cpu_nodes,
                          input_type_rt)
    _check(validate_config(march, config), CONFIG_NAME)
    quant_config = None
    if SPECS[march]["quant_config_file"]:
        quant_config = build_quant_config(march, choice, asym.value, per_channel.value, all_int16, cpu_nodes)
        _check(validate_quant_config(march, quant_config), QUANT_CONFIG_NAME)

    _remove_stale_calibration(out, [h.directory for h in inputs])
    names = write_feature_data(out, inputs, features, npy=march in NASH) if features else \
        write_calibration_data(out, inputs, images, npy=march in NASH)
    written = [out / h.directory for h in inputs]
    write_text_atomic(out / CONFIG_NAME, dump_yaml(config))
    written.append(out / CONFIG_NAME)
    if quant_config is not None:
        write_text_atomic(out / QUANT_CONFIG_NAME, dump_json(quant_config))
        written.append(out / QUANT_CONFIG_NAME)
    elif (out / QUANT_CONFIG_NAME).exists() and _is_previous_output(out):
        (out / QUANT_CONFIG_NAME).unlink()  # from an earlier run for another march
    stats_source = f"`{Path(stats).name}`" if stats is not None else \
        f"collected by ptqengine on the same {len(names)} {'samples of ' + str(data) if features else 'images'}"
    if march in NASH or march == "bernoulli2" or quant_config is None:
        qc_note = []
    else:
        qc_note = [f"{QUANT_CONFIG_NAME} repeats these choices for OpenExplorer versions whose hb_mapper takes "
                   "calibration_parameters.quant_config; config.yaml carries them already (node_info, "
                   "calibration_parameters)."]
    summary = summary_markdown(
        model=model_path, sha256=info.sha256, march=march, target=target.upper(), samples=len(names),
        stats_source=stats_source, inputs=inputs, config=config,
        files=[p.name + ("/" if p.is_dir() else "") for p in written] + [SUMMARY_NAME], facts=facts, choice=choice,
        asym=asym, per_channel=per_channel, int16=wide, int16_nodes=all_int16, cpu_nodes=cpu_nodes,
        requested_int16=int16_nodes, unnamed=unnamed, notes=notes + qc_note)
    write_text_atomic(out / SUMMARY_NAME, summary)
    written.append(out / SUMMARY_NAME)
    for note in notes:
        log.warning(note)
    return HorizonResult(out, march, written, len(names), choice, asym, per_channel, wide, all_int16,
                         list(cpu_nodes), notes)


def _check(problems: List[str], what: str) -> None:
    if problems:  # a bug in this module, not a user error
        raise AssertionError(f"{what} would break Horizon's schema: {'; '.join(problems)}")
