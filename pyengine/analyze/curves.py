"""The report's convergence section: how settled the ranges were, with range-vs-images curves as inline SVG.

Drawn by hand (polylines on a log2 axis of images read), so the figures need no plotting library and the page
stays byte-identical for identical statistics. Each figure shows one tensor's range on half A, on half B and on
the whole at every checkpoint, relative to the whole's last range, with the tolerance band around 1.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable, List, Mapping, Optional

from ..formats.convergence import ConvergenceRecord

WIDTH, HEIGHT, PAD = 330, 210, 36
LINES = (("amax", "whole", "#222222", ""), ("amax_a", "half A", "#1f77b4", "5,3"),
         ("amax_b", "half B", "#ff7f0e", "2,2"))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def curve_svg(curve: Mapping[str, Any], tolerance: float) -> str:
    """One tensor's curve (ConvergenceRecord.curves entry) as an <svg> element."""
    samples = [float(s) for s in curve["samples"]]
    final = curve["amax"][-1]
    if not samples or not final or not math.isfinite(final):
        return ""
    series = {key: [v / final if math.isfinite(v) else None for v in curve[key]] for key, *_ in LINES}
    values = [v for vs in series.values() for v in vs if v is not None] + [1 - tolerance, 1 + tolerance]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    x0, x1 = math.log2(samples[0]), math.log2(samples[-1])

    def x(s: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * ((math.log2(s) - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - lo) / (hi - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-size="10" font-family="sans-serif">',
             f'<text x="{PAD}" y="14" font-size="11">{_e(curve["tensor"][:48])}</text>',
             f'<rect x="{PAD}" y="{_fmt(y(1 + tolerance))}" width="{WIDTH - 2 * PAD}" '
             f'height="{_fmt(y(1 - tolerance) - y(1 + tolerance))}" fill="#e8f5e9"/>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>']
    for s in samples:
        parts.append(f'<text x="{_fmt(x(s))}" y="{HEIGHT - PAD + 12}" text-anchor="middle">{int(s)}</text>')
    for v in (lo, 1.0, hi):
        if v == 1.0 and min(abs(y(1.0) - y(lo)), abs(y(1.0) - y(hi))) < 10:
            continue  # would overlap an end label
        parts.append(f'<text x="{PAD - 3}" y="{_fmt(y(v) + 3)}" text-anchor="end">{v:.3g}</text>')
    for key, label, color, dash in LINES:
        points = " ".join(f"{_fmt(x(s))},{_fmt(y(v))}" for s, v in zip(samples, series[key]) if v is not None)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"{style}/>')
    for i, (_, label, color, _) in enumerate(LINES):
        parts.append(f'<text x="{WIDTH - PAD - 120 + 42 * i}" y="{PAD - 8}" fill="{color}">{label}</text>')
    parts.append(f'<text x="{WIDTH / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">images read '
                 '(range / last whole range)</text></svg>')
    return "".join(parts)


def _rows(record: ConvergenceRecord) -> List[List[str]]:
    def pct(v: float) -> str:
        return "-" if not math.isfinite(v) else f"{v:.2%}"

    return [[f"{r['samples']:,}", "/".join(map(str, r["halves"])), f"{r['within_tolerance']:.1%}", pct(r["spread"]),
             pct(r["median"]), pct(r["median_change"])] for r in record.checkpoint_rows()]


def convergence_section(metadata: Optional[Mapping[str, Any]], table: Callable[..., str], curves: int = 6) -> str:
    """HTML for the report; `table(headers, rows, table_id)` renders a table the report's way."""
    head = "<h2>Convergence: how settled the ranges are</h2>"
    record = None if metadata is None else ConvergenceRecord.from_metadata(metadata)
    if record is None or record.last is None:
        return (head + "<p class=note>The statistics were collected without <code>--convergence</code>: "
                "calibrate with <code>--convergence</code> (or <code>--until-stable 1%</code>) and pass them with "
                "<code>--stats</code> to see how settled each range is.</p>")
    headers = ["images", "halves A/B", f"estimate within {record.tolerance:.1%}", f"estimate at {record.share:.0%}",
               "median disagreement", "median change"]
    figures = [curve_svg(c, record.tolerance) for c in record.curves(record.least_settled(curves))]
    return (head + f"<p>{_e(record.summary_line())}</p>"
            "<p class=note>Split-half disagreement: |range of half A − range of half B| / range of the whole, halves "
            "assigned by a hash of each image's path; about twice the whole range's own relative error. Estimate of "
            f"that error: {_e(record.estimate_name)}.</p>"
            + table(headers, _rows(record), "convergence")
            + "<p class=note>Least settled tensors: range relative to the last whole range; green band: the "
              "tolerance.</p>"
            + '<div class="figs">' + "".join(f"<figure>{f}</figure>" for f in figures if f) + "</div>")
