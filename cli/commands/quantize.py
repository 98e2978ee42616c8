"""ptqengine quantize MODEL (--data DIR | --stats STATS) -o OUT: write an int8 Q/DQ ONNX model."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Annotated, Dict, List, Optional

import typer
from rich.text import Text

from .. import options as opt
from ..console import calibration_progress, print_report_warnings, print_warning, stage_progress, stdout_console

QDQ = "Quantization"


class Mode(str, Enum):
    static = "static"
    dynamic = "dynamic"


def _split_op_types(values: Optional[List[str]]) -> List[str]:
    """--exclude-op-types Softmax,Concat --exclude-op-types Resize -> [Softmax, Concat, Resize]."""
    return [op.strip() for value in values or [] for op in value.split(",") if op.strip()]


@opt.with_preprocess_options
@opt.with_run_options("batch_size", "limit", "seed", "threads", "device")
@opt.with_data_loader_script
def quantize(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="FP32 ONNX model to quantize.")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="Quantized ONNX model to write.")],
    data: Annotated[Optional[str], typer.Option(
        "--data", metavar="DIR", rich_help_panel=opt.RUN,
        help="Calibration images (or .npy/.npz); static mode needs --data or --stats.")] = None,
    stats: Annotated[Optional[Path], typer.Option(
        "--stats", metavar="STATS.ptqs", rich_help_panel=opt.RUN,
        help="Statistics saved by calibrate --save-stats.")] = None,
    algo: opt.DefaultAlgoOpt = None,
    percentile: opt.PercentileOpt = None,
    asymmetric: Annotated[bool, typer.Option(
        "--asymmetric", rich_help_panel=QDQ,
        help="uint8 activations with zero points (onnxruntime, Horizon). Not for TensorRT, which takes "
             "symmetric int8 only.")] = False,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", rich_help_panel=QDQ,
                                              help="Weight scales per output channel (default) or per tensor.")] = True,
    exclude: Annotated[Optional[List[str]], typer.Option(
        "--exclude", metavar="PATTERN", rich_help_panel=QDQ,
        help="Keep nodes whose name matches this glob pattern in float (repeatable).")] = None,
    exclude_op_types: Annotated[Optional[List[str]], typer.Option(
        "--exclude-op-types", metavar="OP,...", rich_help_panel=QDQ,
        help="Keep every node of these op types in float, e.g. Softmax,MatMul.")] = None,
    fp16_fallback: Annotated[Optional[List[str]], typer.Option(
        "--fp16-fallback", metavar="NODE", rich_help_panel=QDQ,
        help="Run this node in FP16 instead of INT8 (exact node name; repeatable; static mode).")] = None,
    mode: Annotated[Mode, typer.Option("--mode", case_sensitive=False, rich_help_panel=QDQ,
                                       help="static: Q/DQ from calibration (TensorRT, onnxruntime); dynamic: "
                                            "activations quantized at run time (onnxruntime; LSTM/transformers).")
                    ] = Mode.static,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    quiet: opt.QuietOpt = False,
) -> None:
    """Quantize MODEL to INT8: Q/DQ for TensorRT explicit quantization and onnxruntime, or dynamic."""
    from ptqengine.api import quantize as run_quantization

    opt.check_writable(output, "-o")
    algo_name, algo_options = opt.algorithm_options(algo, percentile)
    with calibration_progress(quiet) as progress, stage_progress(quiet) as stages:
        result, calibration = run_quantization(
            model, output, data=data, stats=stats, algo=algo_name, algo_options=algo_options, mode=mode.value,
            per_channel=per_channel, asymmetric=asymmetric, exclude=exclude or (), exclude_op_types=_split_op_types(exclude_op_types),
            fp16_fallback=fp16_fallback or (), progress=progress, stage_progress=stages, preprocess=preprocess, **run)
    if calibration is not None and data is not None:
        print_report_warnings(calibration)
    for note in result.report.notes:
        print_warning(note)
    if not quiet:
        _summary(model, output, result.report)


def _summary(model: Path, output: Path, report) -> None:
    console = stdout_console()
    source = model.stat().st_size
    what = (f"{report.activation_qdq} activation Q/DQ, {report.weight_dq} int8 weights"
            if report.mode == "static" else f"{report.weight_dq} int8 weight tensors, dynamic activations")
    console.print(Text(f"Quantized ({report.mode}{', ' + report.algo if report.algo else ''}, "
                       f"{'per-channel' if report.per_channel else 'per-tensor'} weights): {what}", style="bold green"))
    done = report.accuracy
    if done.get("samples"):
        console.print(f"  on {done['samples']} calibration samples: {done.get('ranges_changed', 0)} range(s) chosen "
                      f"per tensor, {done.get('rounded_layers', 0)} layer(s) rounded by output error, "
                      f"{done.get('bias_corrected', 0)} bias(es) corrected")
    if report.folded_bn:
        console.print(f"  folded {report.folded_bn} BatchNormalization into Conv")
    if report.source_opset != report.opset:
        console.print(f"  opset {report.source_opset} -> {report.opset}")
    if report.excluded_nodes:
        console.print(f"  kept in float: {len(report.excluded_nodes)} node(s)")
    if report.fp16_nodes:
        console.print(f"  FP16 fallback: {', '.join(report.fp16_nodes)}")
    if report.skipped:
        console.print(f"  no Q/DQ (no usable range): {len(report.skipped)} tensor(s)")
    size = size_change(source, report.output_bytes, report.mode)
    console.print(f"  {output}  {report.output_bytes / 1e6:.2f} MB ({size})")


def size_change(source: int, output: int, mode: str) -> str:
    """How the file size changed, in words that stay true when it hardly did (dynamic mode on a CNN)."""
    from ptqengine.qdq.dynamic import DYNAMIC_OP_TYPES

    ratio = source / output if output else 0.0
    if ratio >= 1.05:  # below 5% "1.0x smaller" is what a rounded ratio says, not a size change
        return f"{ratio:.1f}x smaller than {source / 1e6:.2f} MB"
    why = f": dynamic mode quantises {', '.join(DYNAMIC_OP_TYPES)} weights only" if mode == "dynamic" else ""
    return f"about the size of the {source / 1e6:.2f} MB original{why}"
