"""ptqengine quantize MODEL (--data DIR | --stats STATS) -o OUT: write an int8 Q/DQ ONNX model."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Annotated, List, Optional

import typer

from .. import options as opt
from ..console import calibration_progress, print_report_warnings, print_warning, stdout_console
from .analyze import AUTO, auto_calibration

RUN = opt.RUN
QDQ = "Quantization"


class Mode(str, Enum):
    static = "static"
    dynamic = "dynamic"


def _split_op_types(values: Optional[List[str]]) -> List[str]:
    """--exclude-op-types Softmax,Concat --exclude-op-types Resize -> [Softmax, Concat, Resize]."""
    return [op.strip() for value in values or [] for op in value.split(",") if op.strip()]


@opt.with_preprocess_options
def quantize(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="FP32 ONNX model to quantize.")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="Quantized ONNX model to write.")],
    data: Annotated[Optional[str], typer.Option(
        "--data", metavar="DIR", rich_help_panel=RUN,
        help="Calibration images (or .npy/.npz); static mode needs --data or --stats.")] = None,
    stats: Annotated[Optional[Path], typer.Option(
        "--stats", metavar="STATS.ptqs", rich_help_panel=RUN, help="Statistics saved by calibrate --save-stats.")] = None,
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
    batch_size: opt.BatchSizeOpt = 8,
    limit: opt.LimitOpt = None,
    seed: opt.SeedOpt = 0,
    threads: opt.ThreadsOpt = None,
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    quiet: opt.QuietOpt = False,
) -> None:
    """Quantize MODEL to INT8: Q/DQ for TensorRT explicit quantization and onnxruntime, or dynamic."""
    from ptqengine.errors import OptionError
    from ptqengine.qdq import AccuracyOptions, quantize_model

    opt.check_writable(output, "-o")
    algo_name, algo_options = opt.algorithm_options(algo or opt.Algo.entropy, percentile)
    calibration, samples = None, None
    if mode is Mode.static:
        if (data is None) == (stats is None):
            raise OptionError("static mode needs exactly one of --data DIR or --stats STATS (or use --mode dynamic)")
        calibration = _calibration(model, data, stats, algo_name, algo_options, batch_size, limit, seed, threads,
                                   preprocess, quiet)
        samples = method_samples(model, data, seed, preprocess, batch_size, threads)
        if samples is None:
            print_warning("--stats without --data: the data-driven accuracy methods (per-tensor ranges, rounding, "
                          "bias correction) need calibration samples and are skipped")
    elif data is not None or stats is not None:
        print_warning("--mode dynamic needs no calibration: --data / --stats ignored")
    accuracy = AccuracyOptions(choose_ranges=algo is None, asymmetric=asymmetric)
    result = quantize_model(model, output, calibration=calibration, mode=mode.value, per_channel=per_channel,
                            exclude=exclude or (), exclude_op_types=_split_op_types(exclude_op_types),
                            fp16_fallback=fp16_fallback or (), samples=samples, accuracy=accuracy)
    for note in result.report.notes:
        print_warning(note)
    if not quiet:
        _summary(model, output, result.report)


def method_samples(model: Path, data: Optional[str], seed: int, preprocess: Any, batch_size: int,
                   threads: Optional[int]) -> Optional[list]:
    """The first calibration samples (seeded like --limit), in batches, for the Q/DQ export's data-driven
    accuracy methods; None without --data."""
    if data is None:
        return None
    from ptqengine.analyze.measure import load_samples
    from ptqengine.model import inspect_model
    from ptqengine.qdq import AccuracyOptions

    return load_samples(inspect_model(model), data, AccuracyOptions().max_samples, seed, preprocess, batch_size,
                        threads)


def _calibration(model, data, stats, algo, algo_options, batch_size, limit, seed, threads, preprocess, quiet):
    if algo == AUTO:
        from ptqengine.errors import OptionError

        if data is None:
            raise OptionError("--algo auto measures the output error on samples: give --data (not --stats)")
        result = _calibration(model, data, None, "max", {}, batch_size, limit, seed, threads, preprocess, quiet)
        return auto_calibration(model, result, data, seed=seed, preprocess=preprocess, batch_size=batch_size,
                                threads=threads, quiet=quiet)
    if stats is not None:
        from ptqengine.pipeline import result_from_stats
        from ptqengine.statsfile import load_stats

        return result_from_stats(load_stats(stats), algo, **algo_options)
    from ptqengine.pipeline import calibrate

    with calibration_progress(quiet) as progress:
        result = calibrate(model, data, algo=algo, algo_options=algo_options, batch_size=batch_size, limit=limit,
                           seed=seed, threads=threads, preprocess=preprocess, progress=progress)
    print_report_warnings(result)
    return result


def _summary(model: Path, output: Path, report) -> None:
    console = stdout_console()
    source = model.stat().st_size
    what = (f"{report.activation_qdq} activation Q/DQ, {report.weight_dq} int8 weights"
            if report.mode == "static" else f"{report.weight_dq} int8 weight tensors, dynamic activations")
    console.print(f"[bold green]Quantized ({report.mode}{', ' + report.algo if report.algo else ''}, "
                  f"{'per-channel' if report.per_channel else 'per-tensor'} weights): {what}[/]")
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
    ratio = source / report.output_bytes if report.output_bytes else 0.0
    console.print(f"  {output}  {report.output_bytes / 1e6:.2f} MB ({ratio:.1f}x smaller than {source / 1e6:.2f} MB)")
