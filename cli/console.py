"""Terminal output shared by the commands: error / warning lines, the progress bar, the closing summary.

Consoles are created per call so they follow the current sys.stdout / sys.stderr (test runners swap
them) and the COLUMNS of the moment. Messages are printed with soft wrapping so that one message is
always one line, whatever the terminal width. Markup is off: tensor names, node names and paths come from
users' files (a tensor named `x[/y]` is legal ONNX) and are printed as they are; styles go through Text.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from ptqengine.algorithms import AUTO, CHOICE

if TYPE_CHECKING:  # pragma: no cover
    from ptqengine.result import CalibrationResult

ProgressCallback = Callable[[int, Optional[int]], None]
Outputs = List[Tuple[str, Path]]  # (what, where) for the summary


class StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        """The reader stopped reading (`ptqengine inspect ... | head`): what it asked for, not a failure of
        ours, so exit 0 (Rich exits 1, which fails `set -o pipefail` scripts)."""
        stop_writing_stdout()


def stop_writing_stdout() -> None:
    """Point stdout at /dev/null (so the interpreter's last flush cannot fail too) and exit 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(0)


def stdout_console() -> Console:
    return StdoutConsole(highlight=False, soft_wrap=True, markup=False, emoji=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def print_error(message: str) -> None:
    stderr_console().print(Text(f"ptqengine: error: {one_line(message)}", style="bold red"))


# Warnings the library logged during this command (main.WarningLines adds them): a report note that says
# the same thing is not printed again.
LOGGED_WARNINGS: Set[str] = set()


def print_warning(message: str) -> None:
    stderr_console().print(Text(f"warning: {one_line(message)}", style="yellow"))


class RateColumn(ProgressColumn):
    """Samples per second since the data pass started: the library reports the pass's rate the same way
    (samples / seconds of the pass), so the bar and the summary agree."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text("-- img/s", style="cyan")
        return Text(f"{task.completed / elapsed:,.1f} img/s", style="cyan")


class LazyProgressBar:
    """A progress(done, total) callback that draws a rich bar on stderr from its first call on.

    Starting lazily keeps the bar off the screen when the run fails during set-up (bad model, empty
    data directory), so such an error stays a single line.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress: Optional[Progress] = None
        self.task = None

    def __call__(self, done: int, total: Optional[int]) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr_console())
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def stop(self, keep: bool) -> None:
        """Leave the final bar on screen (and in logs) after success; remove it after a failure."""
        if self.progress is None:
            return
        self.progress.live.transient = not keep
        if keep:
            self.progress.stop()
        else:  # Progress.stop adds an empty line where stderr is not a terminal: the error must stay one line
            self.progress.live.stop()


@contextlib.contextmanager
def calibration_progress(quiet: bool, label: str = "calibrating") -> Iterator[ProgressCallback]:
    """A progress(done, total) callback for the library; a no-op when quiet."""
    if quiet:
        yield lambda done, total: None
        return
    bar = LazyProgressBar(label)
    try:
        yield bar
    except BaseException:
        bar.stop(keep=False)
        raise
    bar.stop(keep=True)


class StageBar(LazyProgressBar):
    """The calibration bar's behaviour, counting configurations run instead of images."""

    def __call__(self, done: int, total: Optional[int]) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("runs"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=stderr_console())
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)


STAGE_LABELS = {"calibrating": "calibrating", "algorithms": "algorithms", AUTO: "auto (per tensor)",
                CHOICE: "per-tensor choice (layer output error)",
                "sensitivity": "per-node runs", "advice": "advice"}


@contextlib.contextmanager
def stage_progress(quiet: bool) -> Iterator[Callable[[str, int, Optional[int]], None]]:
    """progress(stage, done, total): one bar per stage, each left on screen when the next starts."""
    bars: Dict[str, LazyProgressBar] = {}
    current: List[str] = []

    def update(stage: str, done: int, total: Optional[int]) -> None:
        if quiet:
            return
        if stage not in bars:
            if current:
                bars[current[-1]].stop(keep=True)
            label = STAGE_LABELS.get(stage, stage)
            bars[stage] = LazyProgressBar(label) if stage == "calibrating" else StageBar(label)
            current.append(stage)
        bars[stage](done, total)

    try:
        yield update
    except BaseException:
        if current:
            bars[current[-1]].stop(keep=False)
        raise
    if current:
        bars[current[-1]].stop(keep=True)


def print_summary(result: "CalibrationResult", outputs: Outputs, verb: str = "Calibrated") -> None:
    """Tensors, samples, time, throughput, peak memory and where the files went."""
    report = result.report
    console = stdout_console()
    line = f"{verb} {len(result.amax)} tensors with {result.algo}"
    constants = len(result.cache_amax) - len(result.amax)
    if constants:  # a TensorRT cache lists them too: say so, or its entry count looks wrong
        line += f" and {constants} constant{'s' if constants > 1 else ''} from their values"
        line += "," if report.seconds > 0 else ""
    if report.seconds > 0:
        line += (f" from {report.samples} samples in {report.seconds:.1f} s ({report.samples_per_s:,.1f} images/s "
                 f"over the data, peak memory {report.peak_rss_mb:,.0f} MB)")
    elif report.samples:
        line += f" (statistics of {report.samples} samples)"
    console.print(Text(line, style="bold green"))
    convergence = convergence_line(result)
    if convergence:
        console.print(Text(f"  {convergence}"))  # plain text: "[stopped: ...]" is not markup
    if result.algo == AUTO:
        from ptqengine.analyze.auto_algo import describe_choice

        console.print(f"  auto: {describe_choice(result.algo_options)}")
    elif result.algo == CHOICE:
        facts = result.algo_options
        winners = ", ".join(f"{name} {count}" for name, count in facts.get("winners", {}).items())
        console.print(Text(f"  choice: {facts.get('chosen_by_layer_error', 0)} tensors by their reading layers' "
                           f"output error on {facts.get('samples', 0)} samples ({winners}); "
                           f"{facts.get('by_own_error', 0)} others by their own error (mse)"))
    width = max((len(what) for what, _ in outputs), default=0)
    for what, where in outputs:
        console.print(f"  {what:<{width}}  {where}")


def convergence_line(result: "CalibrationResult") -> str:
    """The convergence summary of a run that measured it ('' otherwise), with what the checkpoints cost."""
    from ptqengine.formats.convergence import ConvergenceRecord

    record = ConvergenceRecord.from_metadata(result.stats.metadata)
    if record is None:
        return ""
    timings = result.report.timings
    cost = ""
    if timings.get("convergence"):  # the rest ran beside inference
        cost = f" (checkpoints {timings['convergence']:.1f} s, {timings.get('convergence_wait', 0.0):.1f} s waited for)"
    return f"convergence: {record.summary_line()}{cost}"


def print_report_warnings(result: "CalibrationResult", extra: Sequence[str] = ()) -> None:
    """Skipped inputs, notes and writer warnings: stderr, shown even with --quiet (NaN/Inf are logged by the library)."""
    report = result.report
    if report.skipped:
        shown = "; ".join(f"{name} ({reason})" for name, reason in report.skipped[:3])
        more = f" and {len(report.skipped) - 3} more" if len(report.skipped) > 3 else ""
        print_warning(f"skipped {len(report.skipped)} input(s): {shown}{more}")
    for note in list(report.notes) + list(extra):
        if one_line(note) not in LOGGED_WARNINGS:
            print_warning(note)
