"""ptqengine inspect FILE [FILE2]: show a scale table or statistics file; with two files, their diff."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..console import stdout_console
from ..tables import checkpoint_table, diff_summary, diff_table, scale_table, settled_table


class Sort(str, Enum):
    file = "file"
    ratio = "ratio"


def inspect(
    file: Annotated[Path, typer.Argument(help="TensorRT cache, scales JSON, onnxruntime calibration.json or .ptqs.")],
    file2: Annotated[Optional[Path], typer.Argument(help="A second file: show amax per tensor side by side.")] = None,
    sort: Annotated[Sort, typer.Option("--sort", case_sensitive=False,
                                       help="Diff order: file order, or largest |log(B/A)| first.")] = Sort.file,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0,
                                             help="Diff: ratios outside 1 +- this are highlighted.")] = 0.05,
    settled: Annotated[int, typer.Option("--settled", min=0,
                                         help="Statistics files: rows of the least settled tensors.")] = 10,
) -> None:
    """Table of tensor, scale and amax (statistics files: min, max, absmax, count, and how settled each range was
    when calibrate measured it with --convergence). Statistics compare by absmax."""
    from ptqengine.formats.compare import KIND_STATS, diff_amax, load_scale_file
    from ptqengine.formats.convergence import ConvergenceRecord

    console = stdout_console()
    first = load_scale_file(file)
    if file2 is None:
        console.print(scale_table(first))
        if first.kind == KIND_STATS:
            record = ConvergenceRecord.from_metadata(first.stats.metadata, str(file))
            if record is None:
                console.print("no convergence record: these statistics were collected without --convergence "
                              "(calibrate --convergence or --until-stable measures how settled the ranges are)")
            else:
                console.print(checkpoint_table(record))
                console.print(settled_table(record, settled))
                console.print(Text(f"convergence: {record.summary_line()}"))
        return
    second = load_scale_file(file2)
    diff = diff_amax(first.amax, second.amax)
    if sort is Sort.ratio:
        diff.sort_by_deviation()
    console.print(diff_table(first, second, diff, tolerance))
    console.print(diff_summary(diff, tolerance))
