"""ptqengine horizon MODEL --data DIR --target J5: a Horizon PTQ kit (config, quant_config, calibration data)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Annotated, Dict, List, Optional

import typer
from rich.text import Text

from .. import options as opt
from ..console import calibration_progress, stdout_console

HORIZON = "Horizon"


@opt.with_preprocess_options
@opt.with_run_options("seed", "threads", "device")
@opt.with_data_loader_script
def horizon(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="ONNX model to convert with Horizon's toolchain.")],
    data: Annotated[Path, typer.Option("--data", metavar="DIR", rich_help_panel=HORIZON,
                                       help="Directory of images (searched recursively), or a list of images (.txt/.lst, e.g. "
                                            "from 'ptqengine select').")],
    target: Annotated[str, typer.Option(
        "--target", rich_help_panel=HORIZON,
        help="X3/J3 (bernoulli2), J5 (bayes), X5 (bayes-e), J6E/S100 (nash-e), J6M/S100P (nash-m), J6P/S600 (nash-p).")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="Output directory (created; refused if non-empty and not a previous "
                                              "horizon output, unless --force).")] = Path("horizon_out"),
    stats: Annotated[Optional[Path], typer.Option(
        "--stats", metavar="STATS.ptqs", rich_help_panel=HORIZON,
        help="Statistics from 'calibrate --save-stats' (default: collect them on the same samples).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, rich_help_panel=HORIZON,
                                         help="Calibration samples to write (a seeded random subset).")] = 100,
    int16: Annotated[Optional[List[str]], typer.Option(
        "--int16", metavar="NODE", rich_help_panel=HORIZON,
        help="Node (or tensor) to compute in int16, besides those our statistics flag. Repeatable.")] = None,
    cpu: Annotated[Optional[List[str]], typer.Option(
        "--cpu", metavar="NODE", rich_help_panel=HORIZON, help="Node (or tensor) to run on the CPU. Repeatable.")] = None,
    input_type_rt: Annotated[Optional[str], typer.Option(
        "--input-type-rt", rich_help_panel=HORIZON,
        help="Runtime input format on the board: nv12 (default for colour images), rgb, bgr, gray, yuv444, featuremap.")] = None,
    force: Annotated[bool, typer.Option("--force", rich_help_panel=opt.OUTPUT,
                                        help="Write into a non-empty directory that is not a previous horizon output.")] = False,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    quiet: opt.QuietOpt = False,
) -> None:
    """Write config.yaml, quant_config.json and calibration data for Horizon's hb_mapper / hb_compile."""
    from ptqengine.horizon import march_for, write_horizon_config

    march_for(target)  # a typo fails before any work
    created = not output.exists()
    try:
        with calibration_progress(quiet or stats is not None) as progress:
            result = write_horizon_config(model, data, target, output, preprocess=preprocess, stats=stats,
                                          samples=samples, int16=int16 or (), cpu=cpu or (),
                                          input_type_rt=input_type_rt, force=force, progress=progress, **run)
    except BaseException:  # Ctrl-C or an error: no empty or half-written kit left behind
        if created and output.is_dir():
            shutil.rmtree(output, ignore_errors=True)  # made by this run: everything in it is ours
        raise
    if quiet:  # the notes were logged by the library, as warning lines
        return
    console = stdout_console()
    choice = result.calibration
    pct = f", max_percentile {choice.max_percentile:g}" if choice.calibration_type == "max" else ""
    console.print(Text(f"Horizon kit for {target.upper()} ({result.march}): {result.samples} samples, "
                  f"calibration_type {choice.calibration_type}{pct}, per_channel {str(result.per_channel.value).lower()}, "
                  f"asymmetric {str(result.asymmetric.value).lower()}, {len(result.int16_nodes)} int16 / "
                  f"{len(result.cpu_nodes)} CPU node(s)", style="bold green"))
    for path in result.files:
        console.print(f"  {path}{'/' if path.is_dir() else ''}")
