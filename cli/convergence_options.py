"""Convergence options of `calibrate`: --convergence --until-stable --stable-share --max-images.

`convergence_options()` turns them into the library's ConvergenceOptions (None: a plain run, unchanged).
Fractions are written as percentages ("1%") or plain fractions ("0.01").
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ptqengine.collect.convergence import ConvergenceOptions
from ptqengine.errors import OptionError

CONVERGENCE = "Convergence (how many images are enough)"

ConvergenceOpt = Annotated[bool, typer.Option(
    "--convergence", rich_help_panel=CONVERGENCE,
    help="Measure how settled the ranges are: statistics of two halves of the data (split by a hash of each "
         "image's path), ranges of each half and of the whole once each half holds 16, 32, 64, ... images; "
         "images are read in a seeded random order. The statistics are the same bytes as without it; the record "
         "goes into --save-stats and --scales-json, and the summary says it in one line.")]
UntilStableOpt = Annotated[Optional[str], typer.Option(
    "--until-stable", metavar="TOL", rich_help_panel=CONVERGENCE,
    help="Stop reading images once the ranges are estimated within TOL (e.g. 1% or 0.01) of what unlimited data "
         "would give, on --stable-share of the tensors at two consecutive checkpoints (implies --convergence). "
         "Estimate of a range's error: half the split-half disagreement, |A - B| / 2 / whole. Entropy ranges do "
         "not settle: with entropy (and the default choice) settling is judged on the percentile (99.99) ranges "
         "of the same statistics, said at the start.")]
StableShareOpt = Annotated[Optional[str], typer.Option(
    "--stable-share", metavar="SHARE", rich_help_panel=CONVERGENCE,
    help="Share of tensors whose estimated error must be within the tolerance (default 99%); the summary "
         "reports the estimate at this share.")]
MaxImagesOpt = Annotated[Optional[int], typer.Option(
    "--max-images", min=1, rich_help_panel=CONVERGENCE,
    help="With --convergence / --until-stable: read at most N images (of the seeded random order).")]

DEFAULT_TOLERANCE = 0.01
DEFAULT_SHARE = 0.99


def parse_fraction(text: str, option: str) -> float:
    """'1%' or '0.01' -> 0.01; a bare number above 1 is refused (1 could mean 1% or 100%)."""
    value = text.strip()
    percent = value.endswith("%")
    try:
        number = float(value[:-1] if percent else value)
    except ValueError:
        raise OptionError(f"{option}: expected a percentage or a fraction (e.g. 1% or 0.01), got {text!r}") from None
    if percent:
        number /= 100.0
    elif number > 1:
        raise OptionError(f"{option}: {text} is ambiguous; write it as a percentage ({text}%) or a fraction")
    if not 0 < number <= 1:
        raise OptionError(f"{option}: expected a value in (0%, 100%], got {text!r}")
    return number


def convergence_options(convergence: bool, until_stable: Optional[str], stable_share: Optional[str],
                        max_images: Optional[int]) -> Optional[ConvergenceOptions]:
    if not convergence and until_stable is None:
        for name, value in (("--stable-share", stable_share), ("--max-images", max_images)):
            if value is not None:
                raise OptionError(f"{name} needs --until-stable (or --convergence)")
        return None
    tolerance = DEFAULT_TOLERANCE if until_stable is None else parse_fraction(until_stable, "--until-stable")
    share = DEFAULT_SHARE if stable_share is None else parse_fraction(stable_share, "--stable-share")
    return ConvergenceOptions(tolerance=tolerance, share=share, until_stable=until_stable is not None,
                              max_images=max_images)
