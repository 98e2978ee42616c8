"""ptqengine calibrate MODEL --data DIR: run the model on calibration data and write scale tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Annotated, Dict, Optional

import typer

from ptqengine.errors import OptionError

from .. import distributed_options as dopt
from .. import options as opt
from ..convergence_options import (ConvergenceOpt, MaxImagesOpt, StableShareOpt, UntilStableOpt,
                                   convergence_options)
from ..console import calibration_progress, print_report_warnings, print_summary, stage_progress


@opt.with_preprocess_options
@opt.with_run_options("batch_size", "limit", "seed", "threads", "device")
@opt.with_data_loader_script
def calibrate(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="ONNX model to calibrate.")],
    data: Annotated[str, typer.Option(
        "--data", metavar="DIR", rich_help_panel=opt.RUN,
        help="Directory of images (searched recursively), a list of images (.txt/.lst, e.g. from 'ptqengine "
             "select'), or .npy/.npz file(s) holding ready input tensors.")],
    algo: opt.DefaultAlgoOpt = None,
    percentile: opt.PercentileOpt = None,
    num_bins: Annotated[int, typer.Option("--num-bins", min=128, rich_help_panel=opt.RUN,
                                          help="Histogram bins the scale search runs on.")] = 2048,
    strict: Annotated[bool, typer.Option("--strict", rich_help_panel=opt.RUN,
                                         help="Fail on an unreadable image instead of skipping it.")] = False,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="TensorRT calibration cache to write.")] = Path("calibration.cache"),
    trt_version: opt.TrtVersionOpt = opt.DEFAULT_TRT_VERSION,
    trt_calibrator: opt.TrtCalibratorOpt = "entropy2",
    scales_json: opt.ScalesJsonOpt = None,
    save_stats: opt.SaveStatsOpt = None,
    qdq: Annotated[Optional[Path], typer.Option(
        "--qdq", metavar="PATH", rich_help_panel=opt.OUTPUT,
        help="Also write a Q/DQ ONNX model with these ranges (TensorRT 11 explicit quantization, "
             "onnxruntime); static, per-channel weights, like `ptqengine quantize`.")] = None,
    quiet: opt.QuietOpt = False,
    convergence: ConvergenceOpt = False,
    until_stable: UntilStableOpt = None,
    stable_share: StableShareOpt = None,
    max_images: MaxImagesOpt = None,
    engine: dopt.EngineOpt = None,
    ray_address: dopt.RayAddressOpt = None,
    workers: dopt.WorkersOpt = None,
    gpus_per_worker: dopt.GpusPerWorkerOpt = 0.0,
    shard_size: dopt.ShardSizeOpt = None,
    max_retries: dopt.MaxRetriesOpt = dopt.DEFAULT_MAX_RETRIES,
    resume: dopt.ResumeOpt = False,
    shards_dir: dopt.ShardsDirOpt = None,
    shard: dopt.ShardOpt = None,
) -> None:
    """Calibrate MODEL on --data and write a TensorRT INT8 calibration cache (and, with --qdq, a Q/DQ model)."""
    from ptqengine.api import CHOICE, calibrate as run_calibration

    algo_name, algo_options = opt.algorithm_options(algo, percentile)
    measure = convergence_options(convergence, until_stable, stable_share, max_images)
    scale_out = dopt.ScaleOut(engine, ray_address, workers, gpus_per_worker, shard_size, max_retries, resume,
                              shards_dir, shard).check()
    run_args = dict(run, preprocess=preprocess, strict=strict, num_bins=num_bins)
    qdq_args = dict(data=data, choose_ranges=algo_name is None, **run_args)
    if scale_out.shard is not None:
        if measure is not None:
            raise OptionError("--shard computes one part of a sharded run; --convergence / --until-stable need "
                              "the single-process run")
        dopt.write_shard(scale_out, model, data, save_stats, scales_json, quiet, **run_args)
        return
    outputs = opt.OutputPlan(output, trt_version, trt_calibrator, scales_json, save_stats, qdq, model,
                             qdq_args).check()
    with calibration_progress(quiet) as progress, stage_progress(quiet) as stages:
        result = run_calibration(model, data, algo=algo_name or CHOICE, algo_options=algo_options,
                                 progress=progress, stage_progress=stages, scale_out=scale_out.library_options(output),
                                 convergence=measure, **run_args)
    written, warnings = outputs.write(result)
    if scale_out.sharded:
        scale_out.cleanup(output, result)
    print_report_warnings(result, warnings)
    if not quiet:
        print_summary(result, written)
