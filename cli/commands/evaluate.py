"""ptqengine evaluate FP32.onnx INT8.onnx --data DIR: how far the INT8 model drifts from the FP32 one."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Annotated, Dict, Optional

import typer
from rich.table import Table
from rich.text import Text

from ptqengine.metrics import COSINE_TARGET

from .. import options as opt
from ..console import stdout_console

@opt.with_preprocess_options
@opt.with_run_options("batch_size", "limit", "seed", "threads", "device")
@opt.with_data_loader_script
def evaluate(
    fp32: Annotated[Path, typer.Argument(metavar="FP32.onnx", help="The reference model.")],
    int8: Annotated[Path, typer.Argument(
        metavar="INT8.onnx|CACHE", help="The quantized model, or a TensorRT calibration cache for FP32.onnx "
                                        "(simulated as TensorRT's implicit int8 computes it, worst case).")],
    data: Annotated[str, typer.Option("--data", metavar="DIR", rich_help_panel=opt.RUN,
                                      help="Images (or .npy/.npz) to run both models on.")],
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", metavar="FILE", rich_help_panel=opt.RUN,
        help="'image-name class-index' per line: also report accuracy of both models.")] = None,
    target_cosine: opt.TargetCosineOpt = COSINE_TARGET,
    cpu_kernels: Annotated[bool, typer.Option(
        "--cpu-kernels", rich_help_panel=opt.RUN,
        help="Also measure INT8 through onnxruntime's fused int8 CPU kernels (CPU-dependent: x86 without VNNI "
             "saturates), beside the default Q/DQ-unfused figures that match TensorRT's int8.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="PATH", rich_help_panel=opt.OUTPUT,
                                                     help="Write every number as JSON.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=opt.OUTPUT,
                                        help="Only the verdict line (every number still goes to --json).")] = False,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
) -> None:
    """Per-output cosine, SQNR and max error, top-1 agreement, accuracy, size and latency of both models."""
    from ptqengine.evaluate import evaluate as run_evaluation

    if json_out is not None:
        opt.check_writable(json_out, "--json")
    report = run_evaluation(fp32, int8, data, labels=labels, preprocess=preprocess, cpu_kernels=cpu_kernels,
                            target_cosine=target_cosine, **run)
    if quiet:
        stdout_console().print(Text(report.verdict))
    else:
        _print(report)
    if json_out is not None:
        report.write_json(json_out)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _table(title: str, outputs) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("output", "cosine", "SQNR dB", "max |err|", "top-1 agree", "accuracy FP32 / INT8"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for m in outputs:
        agree = m.top1_agreement if m.top1_agreement is not None else m.sequence_agreement
        accuracy = "-" if m.accuracy_fp32 is None else f"{m.accuracy_fp32:.1%} / {m.accuracy_int8:.1%}"
        sqnr = "inf" if math.isinf(m.sqnr_db) else f"{m.sqnr_db:.1f}"
        table.add_row(m.name, f"{m.cosine:.5f}", sqnr, f"{m.max_abs_error:.4g}", _pct(agree), accuracy)
    return table


def _print(report) -> None:
    console = stdout_console()
    how = "TensorRT cache, simulated" if report.cache else "Q/DQ unfused"
    console.print(_table(f"FP32 vs INT8 on {report.samples} samples ({how}: int8 as TensorRT computes it)",
                         report.outputs))
    if report.cache:
        cache = report.cache
        lacking = cache["float_for_lack_of_entry"]
        console.print(Text(f"  {cache['header']}: {cache['entries']} entries, {cache['quantized_tensors']} tensors "
                           f"quantised, weights per channel max|w|"
                           + (f", {len(lacking)} kept float for lack of an entry" if lacking else "")
                           + f". {cache['note']}."))
    if report.outputs_cpu_kernels is not None:
        console.print(_table("INT8 through onnxruntime's fused int8 CPU kernels (this CPU only)",
                             report.outputs_cpu_kernels))
    for label, facts in (("FP32", report.fp32), ("INT8", report.int8)):
        if label == "INT8" and report.cache:
            continue  # a cache has no size or latency of its own
        console.print(Text(f"  {label}  {facts.size_bytes / 1e6:8.2f} MB  {facts.latency_ms:8.2f} ms/sample "
                           f"(onnxruntime CPU)  {facts.path}"))
    style = "bold green" if report.passed else "bold yellow"
    console.print(Text(report.verdict, style=style))
