"""What Horizon's converters accept, per march: the keys and values our writer may emit.

Written from Horizon's / D-Robotics' public documentation and model-zoo configs (facts, not code):
- hb_mapper YAML reference (parameter tables for model_parameters, input_parameters,
  calibration_parameters, compiler_parameters): D-Robotics/rdk_doc,
  docs/07_Advanced_development/04_toolchain_development/intermediate/ptq_process.md
  (https://github.com/D-Robotics/rdk_doc). Notably: `node_info` is documented for bayes (RDK Ultra / J5)
  and not for bernoulli2; X3 keeps `run_on_cpu`; `max_percentile` only acts with calibration_type `max`;
  `per_channel` only with a calibration_type other than `default`; `core_num` 1|2 is documented for
  X3 and "do not configure" for RDK Ultra (bayes); `cal_data_type` float32 | uint8, and a directory name
  ending in `_f32` means float32 when the type is omitted.
- X5 (bayes-e) example: D-Robotics/rdk_model_zoo demos/detect/YOLOv11/ptq_yamls/
  yolo11_detect_bayese_640x640_nv12.yaml (input_type_rt nv12, norm_type data_scale, node_info with
  'ON': 'BPU', 'InputType': 'int16', 'OutputType': 'int16', compile_mode latency, optimize_level O3).
- mean_value / scale_value as space-separated per-channel strings, scale = 1/std:
  D-Robotics/rdk_model_zoo demos/classification/RepVGG/yaml/RepVGG_A0_deploy_config.yaml
  (mean 123.675 116.28 103.53, scale 0.01712475 0.017507 0.01742919).
- J6 / S100 (nash-e) hb_compile example: D-Robotics/rdk_model_zoo docs/releases/unified-migration/
  evidence/2026-09-28-yoloe-export/s100-11s-config.yaml (cal_data_type float32, calibration_type default,
  a quant_config under calibration_parameters, core_num 1, optimize_level O2).
- quant_config (J6 HMCT): top-level model_config / op_config / node_config; model_config.activation
  {calibration_type, num_bin, max_num_bin, max_percentile, per_channel, asymmetric}; node entries
  {"qtype": ...} or {"ON": "CPU"}; qtypes bernoulli2 int8 only, bayes / bayes-e int8 + int16, nash adds
  float16 (Horizon J6 OpenExplorer docs as summarised in shared/REFERENCES.md, "Horizon Robotics toolchain").

Where sources differ we keep to the narrower, documented set (J6: optimize_level up to O2 as in the
S100 example; calibration_type `default` accepted on nash because D-Robotics' own S100 config uses it).
`validate_config` / `validate_quant_config` return every problem found; the writer refuses to write a
file with problems and the tests parse our files back and run the same checks.
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping

#: Target names users type (case-insensitive) -> march.
TARGETS: Dict[str, str] = {
    "X3": "bernoulli2", "J3": "bernoulli2",
    "J5": "bayes",
    "X5": "bayes-e",
    "J6E": "nash-e", "S100": "nash-e",
    "J6M": "nash-m", "S100P": "nash-m",
    "J6P": "nash-p", "S600": "nash-p",
}
MARCHES = ("bernoulli2", "bayes", "bayes-e", "nash-e", "nash-m", "nash-p")
NASH = frozenset({"nash-e", "nash-m", "nash-p"})
BAYES = frozenset({"bayes", "bayes-e"})

SECTIONS = ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters")

INPUT_TYPES_TRAIN = frozenset({"rgb", "bgr", "gray", "featuremap", "yuv444"})
INPUT_TYPES_RT = frozenset({"nv12", "yuv444", "rgb", "bgr", "gray", "featuremap"})
LAYOUTS = frozenset({"NCHW", "NHWC"})
NORM_TYPES = frozenset({"no_preprocess", "data_mean", "data_scale", "data_mean_and_scale"})
CAL_DATA_TYPES = frozenset({"float32", "uint8"})
COMPILE_MODES = frozenset({"latency", "bandwidth", "balance"})
NODE_INFO_KEYS = frozenset({"ON", "InputType", "OutputType"})
NODE_INFO_ON = frozenset({"BPU", "CPU"})
QUANT_CONFIG_TOP = frozenset({"model_config", "op_config", "node_config"})
MODEL_CONFIG_KEYS = frozenset({"all_node_type", "model_output_type", "activation"})
ACTIVATION_KEYS = frozenset({"calibration_type", "num_bin", "max_num_bin", "max_percentile", "per_channel",
                             "asymmetric"})

_MODEL_KEYS_COMMON = {"onnx_model", "march", "working_dir", "output_model_file_prefix", "layer_out_dump",
                      "output_nodes", "remove_node_type", "remove_node_name", "debug_mode"}
_INPUT_KEYS = {"input_name", "input_type_train", "input_layout_train", "input_type_rt", "input_layout_rt",
               "input_space_and_range", "input_shape", "input_batch", "norm_type", "mean_value", "scale_value"}
_CAL_KEYS_MAPPER = {"cal_data_dir", "cal_data_type", "preprocess_on", "calibration_type", "max_percentile",
                    "per_channel", "run_on_cpu", "run_on_bpu", "optimization"}
_COMPILER_KEYS = {"compile_mode", "debug", "optimize_level", "input_source", "max_time_per_fc", "jobs"}


def _march_spec(march: str) -> Dict[str, Any]:
    nash = march in NASH
    model_keys = set(_MODEL_KEYS_COMMON) | ({"node_info"} if march != "bernoulli2" else set())
    cal_keys = {"cal_data_dir", "cal_data_type", "calibration_type", "quant_config"} if nash else set(_CAL_KEYS_MAPPER)
    compiler_keys = set(_COMPILER_KEYS) | ({"core_num"} if march == "bernoulli2" or nash else set())
    return {
        "keys": {"model_parameters": frozenset(model_keys), "input_parameters": frozenset(_INPUT_KEYS),
                 "calibration_parameters": frozenset(cal_keys), "compiler_parameters": frozenset(compiler_keys)},
        "calibration_types": frozenset({"kl", "max", "skip", "default"} if nash else
                                       {"default", "mix", "kl", "max", "load", "skip"}),
        "optimize_levels": frozenset({"O0", "O1", "O2"} if nash else {"O0", "O1", "O2", "O3"}),
        "core_num": frozenset({1, 2} if march == "bernoulli2" else {1}),
        "qtypes": frozenset({"int8"} if march == "bernoulli2" else
                            {"int8", "int16"} if march in BAYES else {"int8", "int16", "float16"}),
        "quant_config_file": march != "bernoulli2",  # int8-only X3/J3 has nothing a quant_config adds
    }


SPECS: Dict[str, Dict[str, Any]] = {m: _march_spec(m) for m in MARCHES}


def allowed_keys(march: str, section: str) -> FrozenSet[str]:
    return SPECS[march]["keys"][section]


def _split(value: Any) -> List[str]:
    return [v.strip() for v in str(value).split(";")]


def _check_each(problems: List[str], key: str, value: Any, allowed: FrozenSet[str]) -> None:
    for item in _split(value):
        if item not in allowed:
            problems.append(f"{key}: {item!r} not one of {sorted(allowed)}")


def validate_config(march: str, config: Mapping[str, Any]) -> List[str]:
    """Every way `config` (a parsed config.yaml) breaks the documented schema for `march`."""
    if march not in SPECS:
        return [f"unknown march {march!r}"]
    spec, problems = SPECS[march], []
    for section in config:
        if section not in SECTIONS:
            problems.append(f"unknown section {section!r}")
    for section in SECTIONS:
        values = config.get(section)
        if not isinstance(values, Mapping):
            problems.append(f"section {section!r} missing")
            continue
        for key in values:
            if key not in spec["keys"][section]:
                problems.append(f"{section}.{key} is not a {march} key")
    model = config.get("model_parameters") or {}
    if model.get("march") != march:
        problems.append(f"model_parameters.march is {model.get('march')!r}, expected {march!r}")
    for node, info in (model.get("node_info") or {}).items():
        if not isinstance(info, Mapping) or set(info) - NODE_INFO_KEYS:
            problems.append(f"node_info[{node!r}] keys must be among {sorted(NODE_INFO_KEYS)}")
            continue
        if info.get("ON", "BPU") not in NODE_INFO_ON:
            problems.append(f"node_info[{node!r}].ON must be BPU or CPU")
        for key in ("InputType", "OutputType"):
            if key in info and info[key] not in spec["qtypes"]:
                problems.append(f"node_info[{node!r}].{key} {info[key]!r} not a {march} type")
    inputs = config.get("input_parameters") or {}
    count = len(_split(inputs.get("input_name", "")))
    for key, allowed in (("input_type_train", INPUT_TYPES_TRAIN), ("input_type_rt", INPUT_TYPES_RT),
                         ("input_layout_train", LAYOUTS), ("input_layout_rt", LAYOUTS), ("norm_type", NORM_TYPES)):
        if key in inputs:
            _check_each(problems, key, inputs[key], allowed)
            if len(_split(inputs[key])) != count:
                problems.append(f"{key} has {len(_split(inputs[key]))} entries for {count} input(s)")
    cal = config.get("calibration_parameters") or {}
    if "cal_data_type" in cal:
        _check_each(problems, "cal_data_type", cal["cal_data_type"], CAL_DATA_TYPES)
    if "calibration_type" in cal:
        _check_each(problems, "calibration_type", cal["calibration_type"], spec["calibration_types"])
    if "max_percentile" in cal:
        p = cal["max_percentile"]
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            problems.append(f"max_percentile {p!r} not in [0, 1]")
        if cal.get("calibration_type") != "max":
            problems.append("max_percentile only acts with calibration_type max")
    if "per_channel" in cal and not isinstance(cal["per_channel"], bool):
        problems.append("per_channel must be a boolean")
    if "cal_data_dir" in cal and len(_split(cal["cal_data_dir"])) != count:
        problems.append(f"cal_data_dir lists {len(_split(cal['cal_data_dir']))} directories for {count} input(s)")
    compiler = config.get("compiler_parameters") or {}
    if "compile_mode" in compiler:
        _check_each(problems, "compile_mode", compiler["compile_mode"], COMPILE_MODES)
    if "optimize_level" in compiler:
        _check_each(problems, "optimize_level", compiler["optimize_level"], spec["optimize_levels"])
    if "core_num" in compiler and compiler["core_num"] not in spec["core_num"]:
        problems.append(f"core_num {compiler['core_num']!r} not in {sorted(spec['core_num'])}")
    return problems


def validate_quant_config(march: str, qc: Mapping[str, Any]) -> List[str]:
    """Every way a parsed quant_config.json breaks the documented schema for `march`."""
    if march not in SPECS:
        return [f"unknown march {march!r}"]
    spec, problems = SPECS[march], []
    if not spec["quant_config_file"]:
        problems.append(f"{march} takes no quant_config")
    for key in qc:
        if key not in QUANT_CONFIG_TOP:
            problems.append(f"unknown top-level key {key!r}")
    model = qc.get("model_config") or {}
    for key in model:
        if key not in MODEL_CONFIG_KEYS:
            problems.append(f"model_config.{key} unknown")
    if "all_node_type" in model and model["all_node_type"] not in spec["qtypes"]:
        problems.append(f"all_node_type {model['all_node_type']!r} not a {march} type")
    act = model.get("activation") or {}
    for key in act:
        if key not in ACTIVATION_KEYS:
            problems.append(f"activation.{key} unknown")
    if "calibration_type" in act and act["calibration_type"] not in {"kl", "max"}:
        problems.append(f"activation.calibration_type {act['calibration_type']!r} not kl or max")
    if "max_percentile" in act:
        p = act["max_percentile"]
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            problems.append(f"activation.max_percentile {p!r} not in [0, 1]")
        if act.get("calibration_type") != "max":
            problems.append("activation.max_percentile only acts with calibration_type max")
    for key in ("per_channel", "asymmetric"):
        if key in act and not isinstance(act[key], bool):
            problems.append(f"activation.{key} must be a boolean")
    for section in ("op_config", "node_config"):
        for name, entry in (qc.get(section) or {}).items():
            if not isinstance(entry, Mapping) or not entry or set(entry) - {"qtype", "ON"}:
                problems.append(f"{section}[{name!r}] must hold 'qtype' or 'ON'")
                continue
            if "qtype" in entry and entry["qtype"] not in spec["qtypes"]:
                problems.append(f"{section}[{name!r}].qtype {entry['qtype']!r} not a {march} type")
            if "ON" in entry and entry["ON"] != "CPU":
                problems.append(f"{section}[{name!r}].ON must be 'CPU'")
    return problems
