"""ptqengine calibrate MODEL --data DIR: run the model on calibration data and write scale tables."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Annotated, Optional

import typer

from .. import distributed_options as dopt
from .. import options as opt
from ..console import calibration_progress, print_report_warnings, print_summary
from .analyze import AUTO, auto_calibration

RUN = opt.RUN


@opt.with_preprocess_options
def calibrate(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="ONNX model to calibrate.")],
    data: Annotated[str, typer.Option(
        "--data", metavar="DIR", rich_help_panel=RUN,
        help="Directory of images (searched recursively), or .npy/.npz file(s) holding ready input tensors.")],
    algo: opt.DefaultAlgoOpt = None,
    percentile: opt.PercentileOpt = None,
    batch_size: opt.BatchSizeOpt = 8,
    limit: opt.LimitOpt = None,
    seed: opt.SeedOpt = 0,
    threads: opt.ThreadsOpt = None,
    num_bins: Annotated[int, typer.Option("--num-bins", min=128, rich_help_panel=RUN,
                                          help="Histogram bins the scale search runs on.")] = 2048,
    strict: Annotated[bool, typer.Option("--strict", rich_help_panel=RUN,
                                         help="Fail on an unreadable image instead of skipping it.")] = False,
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
    """Calibrate MODEL on --data and write a TensorRT INT8 calibration cache."""
    from ptqengine.pipeline import calibrate as run_calibration

    algo_name, algo_options = opt.algorithm_options(algo or opt.Algo.entropy, percentile)
    scale_out = dopt.ScaleOut(engine, ray_address, workers, gpus_per_worker, shard_size, max_retries, resume,
                              shards_dir, shard).check()
    auto = algo_name == AUTO  # statistics do not depend on the algorithm: collect, then choose per tensor
    run_args = dict(algo="max" if auto else algo_name, algo_options=algo_options, batch_size=batch_size,
                    limit=limit, seed=seed, threads=threads, preprocess=preprocess, strict=strict, num_bins=num_bins)
    if scale_out.shard is not None:
        dopt.write_shard(scale_out, model, data, save_stats, scales_json, quiet, **run_args)
        return
    outputs = opt.OutputPlan(output, trt_version, trt_calibrator, scales_json, save_stats, qdq, model).check()
    if qdq is not None:  # the Q/DQ model's data-driven accuracy methods; no --algo: per-tensor range choice
        from ptqengine.qdq import AccuracyOptions

        from .quantize import method_samples

        samples = method_samples(model, data, seed, preprocess, batch_size, threads)
        outputs = dataclasses.replace(outputs, qdq_samples=samples,
                                      qdq_accuracy=AccuracyOptions(choose_ranges=algo is None))
    with calibration_progress(quiet) as progress:
        if scale_out.sharded:
            result = scale_out.run(model, data, output, progress, **run_args)
        else:
            result = run_calibration(model, data, progress=progress, **run_args)
    if auto:
        result = auto_calibration(model, result, data, seed=seed, preprocess=preprocess, batch_size=batch_size,
                                  threads=threads, quiet=quiet)
    written, warnings = outputs.write(result)
    if scale_out.sharded:
        scale_out.cleanup(output, result)
    print_report_warnings(result, warnings)
    if not quiet:
        print_summary(result, written)
