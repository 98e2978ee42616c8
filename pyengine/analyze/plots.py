"""Histogram figures for the report: |x| of a tensor with each algorithm's threshold drawn on it.

Rendered offline by matplotlib (the optional `report` extra) as inline SVG text. SVG output is made
byte-stable: no date in its metadata and a fixed hash salt for the element ids matplotlib generates.
Without matplotlib, `histogram_svg` returns None and the report says how to get the figures.
"""
from __future__ import annotations

import io
import logging
from typing import Mapping, Optional

import numpy as np

from ..stats import TensorStats

log = logging.getLogger(__name__)

DISPLAY_BINS = 256  # re-binned from the statistics' search histogram: enough to see the tail
COLORS = {"max": "#444444", "percentile": "#1f77b4", "entropy": "#d62728", "mse": "#2ca02c", "auto": "#9467bd"}
STYLES = {"max": ":", "percentile": "--", "entropy": "-", "mse": "-.", "auto": (0, (1, 1))}


def matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def display_histogram(stats: TensorStats, bins: int = DISPLAY_BINS) -> tuple:
    """(counts, edges) of |x| over [0, absmax] in `bins` bins (a coarser view of the search histogram)."""
    counts, width = stats.search_histogram()
    counts = np.asarray(counts, dtype=np.float64)
    group = max(1, len(counts) // bins)
    usable = len(counts) - len(counts) % group
    merged = counts[:usable].reshape(-1, group).sum(axis=1)
    if usable < len(counts):
        merged[-1] += counts[usable:].sum()
    edges = np.arange(len(merged) + 1, dtype=np.float64) * width * group
    return merged, edges


def histogram_svg(name: str, stats: TensorStats, thresholds: Mapping[str, float]) -> Optional[str]:
    """An <svg> element (text) of the histogram with one vertical line per threshold; None without matplotlib."""
    if not matplotlib_available():
        return None
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    counts, edges = display_histogram(stats)
    with matplotlib.rc_context({"svg.hashsalt": "ptqengine", "svg.fonttype": "none", "font.size": 8}):
        fig = Figure(figsize=(5.2, 2.4), dpi=72)
        FigureCanvasSVG(fig)
        ax = fig.add_subplot()
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="#9ecae1", baseline=0.5)
        ax.set_yscale("log")
        ax.set_xlim(0, edges[-1] * 1.02 if edges[-1] > 0 else 1.0)
        for algo, value in thresholds.items():
            if np.isfinite(value) and value > 0:
                ax.axvline(value, color=COLORS.get(algo, "#000000"), linestyle=STYLES.get(algo, "-"),
                           linewidth=1.2, label=f"{algo} {value:.4g}")
        ax.set_xlabel("|x|")
        ax.set_ylabel("count")
        ax.set_title(_short(name), fontsize=8)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _short(name: str, limit: int = 70) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
