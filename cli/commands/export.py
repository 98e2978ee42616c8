"""ptqengine export STATS: derive new scale tables from saved statistics, without running the model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import options as opt
from ..console import print_report_warnings, print_summary


def export(
    stats: Annotated[Path, typer.Argument(metavar="STATS.ptqs", help="Statistics saved by calibrate --save-stats.")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="TensorRT calibration cache to write.")],
    algo: opt.SavedStatsAlgoOpt = opt.SavedStatsAlgo.entropy,
    percentile: opt.PercentileOpt = None,
    trt_version: opt.TrtVersionOpt = opt.DEFAULT_TRT_VERSION,
    trt_calibrator: opt.TrtCalibratorOpt = "entropy2",
    scales_json: opt.ScalesJsonOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Re-derive scales from saved statistics with any algorithm and write a TensorRT cache."""
    from ptqengine.result import result_from_stats
    from ptqengine.statsfile import load_stats

    algo_name, algo_options = opt.algorithm_options(algo, percentile)
    outputs = opt.OutputPlan(output, trt_version, trt_calibrator, scales_json).check()
    result = result_from_stats(load_stats(stats), algo_name, **algo_options)
    written, warnings = outputs.write(result)
    print_report_warnings(result, warnings)
    if not quiet:
        print_summary(result, written, verb="Exported")
