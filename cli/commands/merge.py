"""ptqengine merge PART.ptqs... -o MERGED.ptqs: combine shard statistics written by `calibrate --shard i/N`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from .. import options as opt
from ..console import stdout_console


def merge(
    parts: Annotated[List[Path], typer.Argument(metavar="PART.ptqs...",
                                                help="Part files from 'calibrate --shard i/N --save-stats'.")],
    output: Annotated[Path, typer.Option("-o", "--output", rich_help_panel=opt.OUTPUT,
                                         help="Merged statistics file to write.")],
    partial: Annotated[bool, typer.Option(
        "--partial", rich_help_panel=opt.OUTPUT,
        help="Allow missing shards: write a bigger part to merge again later (default: every shard must be "
             "present, and the result is exactly the statistics of a single run).")] = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Merge shard statistics; then 'ptqengine export MERGED.ptqs -o calibration.cache' as usual."""
    from ptqengine.distributed import merge_part_files
    from ptqengine.statsfile import save_stats

    opt.check_writable(output, "-o")
    bundle = merge_part_files(parts, partial=partial)
    save_stats(output, bundle)
    if not quiet:
        shards = bundle.metadata.get("shards")
        what = (f"{len(shards['ids'])} of {shards['count']} shards" if shards
                else "all shards")
        stdout_console().print(f"Merged {len(parts)} part(s), {what}, {bundle.metadata.get('samples', 0)} samples "
                               f"-> {output}")
