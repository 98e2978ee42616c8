"""ptqengine analyze MODEL --data DIR -o report.html: per-node sensitivity, algorithm choice, mixed-precision advice."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Annotated, Dict, List, Optional

import typer
from rich.table import Table
from rich.text import Text

from ptqengine.atomic import atomic_group
from ptqengine.metrics import COSINE_TARGET

from .. import options as opt
from ..console import stage_progress, stdout_console

SHOWN_NODES = 10


@opt.with_preprocess_options
@opt.with_run_options("batch_size", "limit", "seed", "threads", "device")
@opt.with_data_loader_script
def analyze(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="FP32 ONNX model to analyse.")],
    data: Annotated[str, typer.Option("--data", metavar="DIR", rich_help_panel=opt.RUN,
                                      help="Images (or .npy/.npz) to measure on (and calibrate on without --stats).")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="HTML report to write (one self-contained file).")] = Path("report.html"),
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="PATH", rich_help_panel=opt.OUTPUT,
                                                     help="Also write every number as JSON.")] = None,
    stats: Annotated[Optional[Path], typer.Option(
        "--stats", metavar="STATS.ptqs", rich_help_panel=opt.RUN,
        help="Statistics saved by calibrate --save-stats (skips the calibration run).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, rich_help_panel=opt.RUN,
                                         help="Samples every configuration is measured on.")] = 32,
    target_cosine: opt.TargetCosineOpt = COSINE_TARGET,
    metric: Annotated[opt.Metric, typer.Option("--metric", case_sensitive=False, rich_help_panel=opt.RUN,
                                               help="Ranking and algorithm-choice metric.")] = opt.Metric.cosine,
    algo: Annotated[opt.Algo, typer.Option(
        "--algo", case_sensitive=False, rich_help_panel=opt.ALGORITHM,
        help="Ranges the sensitivity runs use; auto: the per-tensor choice that minimises the output error.")
    ] = opt.Algo.auto,
    nodes: Annotated[Optional[List[str]], typer.Option(
        "--nodes", metavar="PATTERN", rich_help_panel=opt.RUN,
        help="Only run the per-node analysis on nodes matching this glob (repeatable).")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", rich_help_panel=opt.RUN,
                                              help="Weight scales per output channel (default) or per tensor.")] = True,
    histograms: Annotated[int, typer.Option("--histograms", min=0, rich_help_panel=opt.OUTPUT,
                                            help="Histograms of the most sensitive tensors in the report.")] = 6,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    quiet: opt.QuietOpt = False,
) -> None:
    """Rank MODEL's nodes by INT8 sensitivity, compare calibration algorithms, advise what to keep in float."""
    from ptqengine.analyze import analyze as run_analysis

    opt.check_writable(output, "-o")
    if json_out is not None:
        opt.check_writable(json_out, "--json")
    with stage_progress(quiet) as progress:
        result = run_analysis(model, data, stats=stats, samples=samples, target_cosine=target_cosine,
                              metric=metric.value, algo=algo.value, preprocess=preprocess, per_channel=per_channel,
                              nodes=nodes, progress=progress, **run)
    with atomic_group():  # the report and its JSON are replaced together, or neither is
        result.write_html(output, histograms=histograms)
        if json_out is not None:
            result.write_json(json_out)
    if not quiet:
        _print(result, output, json_out)


def _print(result, output: Path, json_out: Optional[Path]) -> None:
    console = stdout_console()
    scores = "  ".join(f"{name} {s.cosine:.4f}" for name, s in result.algorithm_scores.items())
    console.print(Text.assemble(("Output cosine, everything INT8:", "bold"),
                                f" {scores}  (best single: {result.best_single})"))
    overall = result.overall
    if overall.top1_agreement is not None and not overall.agreement_meaningful:
        console.print(Text(f"Top-1 agreement is not meaningful on these samples: FP32's own top-1 margin is below the "
                           f"error the target cosine tolerates on {overall.undecided:.0%} of them (images unlike the "
                           "model's data?); the advice aims at cosine alone.", style="yellow"))
    table = Table(title=f"Most sensitive nodes ({len(result.sensitivity)} analysed)", title_justify="left")
    for column in ("rank", "node", "type", "cosine alone", "cosine all but"):
        table.add_column(column, justify="left" if column in ("node", "type") else "right")
    for s in result.sensitivity[:SHOWN_NODES]:
        table.add_row(str(s.rank), s.label, s.op_type, f"{s.alone.cosine:.5f}", f"{s.all_but.cosine:.5f}")
    console.print(table)
    advice = result.advice
    if not advice.nodes:
        console.print(Text(f"All INT8 reaches cosine {advice.cosine_int8:.4f} >= {advice.target_cosine}: "
                           "nothing to keep in float.", style="bold green"))
    else:
        style, verdict = ("bold green", "reached") if advice.reached else ("bold yellow", "NOT reached")
        console.print(Text(f"Keep {len(advice.nodes)} node(s) in higher precision: cosine "
                           f"{advice.cosine_int8:.4f} -> {advice.cosine:.4f} (target {advice.target_cosine} {verdict})",
                           style=style))
        console.print(f"  quantize: {' '.join(advice.exclude_args)}")
        if advice.trt_layer_precisions:
            console.print(f"  trtexec:  {advice.trt_layer_precisions}")
    console.print(f"{result.runs} configurations in {result.seconds:.1f} s")
    console.print(f"  report  {output}")
    if json_out is not None:
        console.print(f"  JSON    {json_out}")

