"""ptqengine evaluate FP32.onnx INT8.onnx --data DIR: how far the INT8 model drifts from the FP32 one."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Annotated, Optional

import typer
from rich.table import Table

from .. import options as opt
from ..console import stdout_console

RUN = "Evaluation run"


@opt.with_preprocess_options
def evaluate(
    fp32: Annotated[Path, typer.Argument(metavar="FP32.onnx", help="The reference model.")],
    int8: Annotated[Path, typer.Argument(metavar="INT8.onnx", help="The quantized model.")],
    data: Annotated[str, typer.Option("--data", metavar="DIR", rich_help_panel=RUN,
                                      help="Images (or .npy/.npz) to run both models on.")],
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, rich_help_panel=RUN,
                                                 help="Use at most N samples (a seeded random subset).")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", metavar="FILE", rich_help_panel=RUN,
        help="'image-name class-index' per line: also report accuracy of both models.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="PATH", rich_help_panel=opt.OUTPUT,
                                                     help="Write every number as JSON.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=RUN)] = 8,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=RUN, help="Seed of the --limit subset.")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, rich_help_panel=RUN)] = None,
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
) -> None:
    """Per-output cosine, SQNR and max error, top-1 agreement, accuracy, size and latency of both models."""
    from ptqengine.evaluate import evaluate as run_evaluation

    if json_out is not None:
        opt.check_writable(json_out, "--json")
    report = run_evaluation(fp32, int8, data, limit=limit, labels=labels, batch_size=batch_size, seed=seed,
                            preprocess=preprocess, threads=threads)
    _print(report)
    if json_out is not None:
        report.write_json(json_out)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print(report) -> None:
    console = stdout_console()
    table = Table(title=f"FP32 vs INT8 on {report.samples} samples", title_justify="left")
    for column in ("output", "cosine", "SQNR dB", "max |err|", "top-1 agree", "accuracy FP32 / INT8"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for m in report.outputs:
        agree = m.top1_agreement if m.top1_agreement is not None else m.sequence_agreement
        accuracy = "-" if m.accuracy_fp32 is None else f"{m.accuracy_fp32:.1%} / {m.accuracy_int8:.1%}"
        sqnr = "inf" if math.isinf(m.sqnr_db) else f"{m.sqnr_db:.1f}"
        table.add_row(m.name, f"{m.cosine:.5f}", sqnr, f"{m.max_abs_error:.4g}", _pct(agree), accuracy)
    console.print(table)
    for label, facts in (("FP32", report.fp32), ("INT8", report.int8)):
        console.print(f"  {label}  {facts.size_bytes / 1e6:8.2f} MB  {facts.latency_ms:8.2f} ms/sample "
                      f"(onnxruntime CPU)  {facts.path}")
    style = "bold green" if report.passed else "bold yellow"
    console.print(f"[{style}]{report.verdict}[/]")
