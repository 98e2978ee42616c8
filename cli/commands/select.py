"""ptqengine select MODEL --data DIR -n N -o LIST: the N images that cover what the model sees, as a list file."""
from __future__ import annotations

import statistics
from enum import Enum
from pathlib import Path
from typing import Any, Annotated, Dict

import typer
from rich.text import Text

from ptqengine.select import SIGNATURE_TENSORS

from .. import options as opt
from ..console import calibration_progress, print_warning, stdout_console

SELECT = "Selection"


class Method(str, Enum):
    match = "match"
    kcenter = "kcenter"


@opt.with_preprocess_options
@opt.with_run_options("limit", "seed", "threads")
def select(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="The model the images are chosen for.")],
    data: Annotated[Path, typer.Option("--data", metavar="DIR", rich_help_panel=SELECT,
                                       help="Folder of candidate images (searched recursively) or a list file.")],
    count: Annotated[int, typer.Option("-n", "--count", min=1, rich_help_panel=SELECT, help="Images to choose.")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="List file to write (one image per line, in pick order); calibrate "
                                              "and horizon take it as --data.")] = Path("selected.txt"),
    method: Annotated[Method, typer.Option(
        "--method", case_sensitive=False, rich_help_panel=SELECT,
        help="match: the images whose pooled activation tails match the whole set's (what calibration sees); "
             "kcenter: farthest-point cover (favours rare images).")] = Method.match,
    algo: Annotated[opt.Algo, typer.Option(
        "--algo", case_sensitive=False, rich_help_panel=SELECT,
        help="The algorithm the images will be calibrated with. match starts with the images holding each "
             "tensor's largest value, on which max, entropy and mse depend, but not for percentile: its ranges "
             "do not depend on that value, and those few extreme images would lift a small choice's tails.")
    ] = opt.Algo.entropy,
    tensors: Annotated[int, typer.Option(
        "--tensors", min=1, rich_help_panel=SELECT,
        help="Activations in each image's signature, spread over the graph.")] = SIGNATURE_TENSORS,
    strict: Annotated[bool, typer.Option("--strict", rich_help_panel=opt.RUN,
                                         help="Fail on an unreadable image instead of skipping it.")] = False,
    run: Dict[str, Any] = None,  # the run option set, parsed (opt.with_run_options)
    preprocess: Any = None,  # the preprocessing option set, parsed (opt.with_preprocess_options)
    quiet: opt.QuietOpt = False,
) -> None:
    """Choose N images of --data that cover what MODEL sees better than N at random; write them as a list file."""
    from ptqengine.select import select as run_selection
    from ptqengine.select import write_image_list

    opt.check_writable(output, "-o")
    with calibration_progress(quiet, label="signatures") as progress:
        chosen = run_selection(model, data, count, method=method.value, algo=algo.value, tensors=tensors,
                               progress=progress, preprocess=preprocess, strict=strict, **run)
    choice = f"match for {chosen.algo}" if chosen.method == "match" else chosen.method
    header = [f"ptqengine select: {count} of {chosen.candidates} images of {data} for {model.name} "
              f"({choice}, {len(chosen.tensors)} activations), in pick order"]
    write_image_list(output, chosen, header)
    if chosen.skipped:
        print_warning(f"skipped {len(chosen.skipped)} unreadable image(s), first: {chosen.skipped[0][0]}")
    if quiet:
        return
    random = statistics.median(chosen.random_distance)
    stdout_console().print(Text.assemble(
        (f"Chose {count} of {chosen.candidates:,} images ({choice}) in {chosen.seconds:.1f} s", "bold green"),
        f": distance of their pooled activation tails to the whole set's {chosen.distance:.4g}, "
        f"random {count}: {random:.4g} (median of {len(chosen.random_distance)} seeded draws)\n  list  {output}"))
