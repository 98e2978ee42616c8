"""ptq_summary.md: what the Horizon kit holds and why each choice was made, with every tensor's measured range.

Written for the people who run Horizon's converters: the choices (calibration_type, max_percentile,
per_channel, asymmetric, int16 nodes) each with the measurement behind it, the inputs as the config
describes them, and per tensor (named as in the ONNX model) the ranges to compare with Horizon's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from .._version import __version__
from . import choices as ch
from .calibdata import HorizonInput
from .schema import NASH

SUMMARY_TITLE = "# ptqengine Horizon PTQ summary"
SUMMARY_NAME = "ptq_summary.md"


def number(value: float) -> str:
    return format(float(value), ".10g")


def norm_values(hin: HorizonInput) -> Dict[str, Optional[str]]:
    cfg = hin.plan.config
    mean = " ".join(number(m) for m in cfg.mean) if cfg.mean is not None else None
    scale = " ".join(number(1.0 / s) for s in cfg.std) if cfg.std is not None else None
    norm = {(True, True): "data_mean_and_scale", (True, False): "data_mean", (False, True): "data_scale",
            (False, False): "no_preprocess"}[(mean is not None, scale is not None)]
    return {"norm_type": norm, "mean_value": mean, "scale_value": scale}


def _g(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return format(value, ".4g")


def summary_markdown(*, model: Path, sha256: str, march: str, target: str, samples: int, stats_source: str,
                     inputs: Sequence[HorizonInput], config: Mapping[str, Any], files: Sequence[str],
                     facts: Sequence[ch.TensorFacts], choice: ch.CalibrationChoice, asym: ch.Decision,
                     per_channel: ch.Decision, int16: ch.Decision, int16_nodes: Sequence[str],
                     cpu_nodes: Sequence[str], requested_int16: Sequence[str], unnamed: Sequence[str],
                     notes: Sequence[str]) -> str:
    nash = march in NASH
    tool = "hb_compile --config config.yaml" if nash else "hb_mapper makertbin --model-type onnx --config config.yaml"
    lines = [SUMMARY_TITLE, "",
             f"- model: `{model.name}` (sha256 `{sha256}`)",
             f"- target: {target} (march `{march}`)",
             f"- calibration samples written: {samples}",
             f"- statistics: {stats_source}",
             f"- ptqengine {__version__}", "",
             "Run from this directory: `" + tool + "`.", "",
             "## Files", ""]
    lines += [f"- `{f}`" for f in files]
    pct = "-" if choice.max_percentile is None else _g(choice.max_percentile)
    lines += ["", "## Choices", "", "| setting | value | why |", "|---|---|---|",
              f"| calibration_type | {choice.calibration_type} | {choice.reason} |",
              f"| max_percentile | {pct} | used with calibration_type max only |",
              f"| per_channel | {str(per_channel.value).lower()} | {per_channel.reason} |",
              f"| asymmetric | {str(asym.value).lower()} | {asym.reason}"
              + ("" if march != "bernoulli2" else "; X3/J3 has no switch for it") + " |",
              f"| int16 nodes | {len(int16_nodes)} | {int16.reason}; plus {len(requested_int16)} from --int16 |",
              f"| CPU nodes | {len(cpu_nodes)} | from --cpu |", ""]
    if int16.tensors and march == "bernoulli2":
        lines += ["X3/J3 (bernoulli2) computes in int8 only: the tensors flagged for int16 below were not "
                  "changed; consider running their nodes on the CPU (--cpu NODE).", ""]
    if unnamed:
        lines += [f"Flagged tensors made by unnamed nodes ({', '.join(f'`{u}`' for u in unnamed)}) could not be "
                  "written to the configs: give those nodes names in the ONNX model.", ""]
    if int16_nodes or cpu_nodes:
        lines += ["Nodes: " + ", ".join([f"`{n}` int16" for n in int16_nodes] + [f"`{n}` CPU" for n in cpu_nodes]), ""]
    lines += ["## Inputs", "", "| input | type (train / runtime) | layout | shape | norm_type | mean | scale | directory |",
              "|---|---|---|---|---|---|---|---|"]
    params = config["input_parameters"]
    rts = params["input_type_rt"].split(";")
    for i, h in enumerate(inputs):
        norm = norm_values(h)
        lines.append(f"| `{h.name}` | {h.train_type} / {rts[i]} | {h.plan.layout} | {'x'.join(map(str, h.shape))} | "
                     f"{norm['norm_type']} | {norm['mean_value'] or '-'} | {norm['scale_value'] or '-'} | "
                     f"`{h.directory}/` |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Measured ranges", "",
              "Per tensor, named as in the ONNX model, to compare with Horizon's calibrated model. amax columns: "
              f"max |x|, p{ch.PERCENTILE:g} of |x|, TensorRT-style KL (entropy) threshold, and the one the chosen "
              "calibration implies. tail = max/p; wide = chosen amax / median non-zero |x|; channel = widest / "
              "median channel.", "",
              "| tensor | node | op | min | max | amax max | amax p | amax KL | amax chosen | tail | wide | channel | flags |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    heavy, wide, one_sided = set(choice.heavy), set(int16.tensors), set(asym.tensors)
    spread = set(per_channel.tensors)
    for f in facts:
        flags = [flag for flag, hit in (("heavy-tail", f.name in heavy), ("int16", f.name in wide),
                                        ("one-sided", f.name in one_sided), ("channel-spread", f.name in spread)) if hit]
        lines.append(f"| `{f.name}` | {('`' + f.node + '`') if f.node else '-'} | {f.op_type or 'input'} | "
                     f"{_g(f.min)} | {_g(f.max)} | {_g(f.amax_max)} | {_g(f.amax_percentile)} | {_g(f.amax_entropy)} | "
                     f"{_g(choice.amax(f))} | {_g(f.tail_ratio)} | {_g(ch.int16_ratio(f, choice))} | "
                     f"{_g(f.channel_ratio)} | {' '.join(flags)} |")
    return "\n".join(lines) + "\n"
