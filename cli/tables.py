"""Rich tables for `ptqengine inspect`: one scale table, one statistics file (with how settled its ranges
are, when the run measured it), or a diff of two files."""
from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

from ptqengine.formats.compare import KIND_STATS, ScaleFile, TableDiff
from ptqengine.formats.convergence import ConvergenceRecord


def number(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def file_title(f: ScaleFile) -> str:
    details = f", {f.description}" if f.description else ""
    return f"{f.path}: {f.kind}{details}, {len(f.amax)} tensors"


def scale_table(f: ScaleFile) -> Table:
    if f.kind == KIND_STATS:
        return stats_table(f)
    table = Table(title=file_title(f), title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("tensor", overflow="fold")
    table.add_column("scale", justify="right")
    table.add_column("amax", justify="right")
    for index, (name, amax) in enumerate(f.amax.items()):
        table.add_row(str(index), name, number(amax / 127.0), number(amax))
    return table


def stats_table(f: ScaleFile) -> Table:
    table = Table(title=file_title(f), title_justify="left")
    for column in ("#", "tensor", "min", "max", "absmax", "count", "nan", "inf"):
        table.add_column(column, justify="left" if column == "tensor" else "right",
                         overflow="fold" if column == "tensor" else "ellipsis")
    for index, (name, s) in enumerate(f.stats.tensors.items()):
        table.add_row(str(index), name, number(s.min), number(s.max), number(s.absmax), str(s.count),
                      str(s.nan_count), str(s.inf_count))
    return table


def ratio_text(ratio: float, tolerance: float) -> Text:
    if math.isnan(ratio):
        return Text("-", style="dim")
    off = not (1 - tolerance <= ratio <= 1 + tolerance)
    return Text(f"{ratio:.4f}", style="bold red" if off else "green")


def diff_table(a: ScaleFile, b: ScaleFile, diff: TableDiff, tolerance: float) -> Table:
    table = Table(title=f"A = {file_title(a)}\nB = {file_title(b)}", title_justify="left")
    table.add_column("tensor", overflow="fold")
    table.add_column("amax A", justify="right")
    table.add_column("amax B", justify="right")
    table.add_column("B / A", justify="right")
    for name, amax_a, amax_b, ratio in diff.common:
        table.add_row(name, number(amax_a), number(amax_b), ratio_text(ratio, tolerance))
    for name in diff.only_a:
        table.add_row(name, number(a.amax[name]), Text("only in A", style="yellow"), "")
    for name in diff.only_b:
        table.add_row(name, Text("only in B", style="yellow"), number(b.amax[name]), "")
    return table


def diff_summary(diff: TableDiff, tolerance: float) -> str:
    off = sum(1 for *_, r in diff.common if not (1 - tolerance <= r <= 1 + tolerance) and not math.isnan(r))
    return (f"{len(diff.common)} tensors in both, {off} differ by more than {tolerance:.0%} "
            f"(largest ratio {diff.worst_ratio:.4f}); {len(diff.only_a)} only in A, {len(diff.only_b)} only in B")


def percent(value: float) -> str:
    return "-" if value is None or math.isinf(value) or math.isnan(value) else f"{value:.2%}"


def checkpoint_table(record: ConvergenceRecord) -> Table:
    """The curve: per checkpoint, how many tensors' halves agree and how far."""
    table = Table(title=f"Estimated error of the {record.algorithm} ranges by images read (estimate: "
                        f"{record.estimate_name}; tolerance {record.tolerance:.1%})", title_justify="left")
    for column in ("images", "halves", "within tolerance", f"estimate at {record.share:.0%}",
                   "median disagreement", "median change"):
        table.add_column(column, justify="right")
    for row in record.checkpoint_rows():
        table.add_row(f"{row['samples']:,}", "/".join(str(h) for h in row["halves"]),
                      f"{row['within_tolerance']:.1%}", percent(row["spread"]), percent(row["median"]),
                      percent(row["median_change"]))
    return table


def settled_table(record: ConvergenceRecord, rows: int) -> Table:
    """The least settled tensors at the last checkpoint, worst first."""
    by_name = {r["tensor"]: r for r in record.rows()}
    since = dict(zip(record.tensors, record.settled_since()))
    table = Table(title=f"{rows} least settled tensors", title_justify="left")
    for column in ("tensor", "amax", "amax A", "amax B", "disagreement", "estimate", "change", "settled since"):
        table.add_column(column, justify="left" if column == "tensor" else "right",
                         overflow="fold" if column == "tensor" else "ellipsis")
    for name in record.least_settled(rows):
        r = by_name[name]
        style = "bold red" if r["estimate"] > record.tolerance else "green"
        table.add_row(Text(name), number(r["amax"]), number(r["amax_a"]), number(r["amax_b"]),
                      percent(r["disagreement"]), Text(percent(r["estimate"]), style=style), percent(r["change"]),
                      "-" if since[name] is None else f"{since[name]:,} images")
    return table
