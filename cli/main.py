"""The `ptqengine` command: subcommands in cli/commands/, one file each.

User errors (PtqError from the library, bad option values from the parser) become ONE red line on
stderr and exit code 2, with no traceback. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated, Any, Callable, Optional, Sequence

import typer
from rich.markup import escape as rich_escape
from typer.core import TyperCommand, TyperGroup

from ptqengine import __version__
from ptqengine.errors import PtqError

from .commands.analyze import analyze
from .commands.calibrate import calibrate
from .commands.demo import demo
from .commands.evaluate import evaluate
from .commands.export import export
from .commands.horizon import horizon
from .commands.inspect import inspect
from .commands.merge import merge
from .commands.quantize import quantize
from .commands.select import select
from .console import LOGGED_WARNINGS, one_line, print_error, print_warning, stop_writing_stdout

EXIT_USAGE = 2


def _is_usage_error(exc: BaseException) -> bool:
    """click's UsageError, whether typer vendors click or uses the package (checked by shape, not class)."""
    return getattr(exc, "exit_code", None) == EXIT_USAGE and callable(getattr(exc, "format_message", None))


def literal(text: Optional[str]) -> Optional[str]:
    """Help text as written: typer parses help as Rich markup, which would swallow `".[gpu]"`."""
    return rich_escape(text) if text else text


def _help_params(params: list) -> list:
    """Flags (--quiet, --help) take no value: show none (typer would print a <bool> placeholder); every help
    text is shown literally (escaped once: get_params runs on every help call)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        if getattr(param, "help", None) and not getattr(param, "_ptq_literal", False):
            param.help = literal(param.help)
            param._ptq_literal = True
    return params


class PtqCommand(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help, self.short_help = literal(self.help), literal(self.short_help)

    def get_params(self, ctx: Any) -> list:
        return _help_params(super().get_params(ctx))


class PtqGroup(TyperGroup):
    """Runs click in non-standalone mode so every user error is reported the same single-line way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = literal(self.help)

    def get_params(self, ctx: Any) -> list:
        return _help_params(super().get_params(ctx))

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        except PtqError as exc:
            print_error(str(exc))
            sys.exit(EXIT_USAGE)
        except (typer.Abort, KeyboardInterrupt):
            print_error("interrupted")
            sys.exit(130)
        except MemoryError:
            # The library estimates what a run needs before it starts (collect/budget.py); this is the net
            # under it, for inputs whose size shows only while they are read.
            print_error("out of memory: lower --batch-size or --limit, or give smaller inputs")
            sys.exit(EXIT_USAGE)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "ptqengine"
            print_error(f"{exc.format_message()} (see '{command} --help')")
            sys.exit(EXIT_USAGE)
        sys.exit(code if isinstance(code, int) else 0)


class WarningLines(logging.Handler):
    """Library log records as one-line messages on stderr (warnings by default, more with --verbose)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            LOGGED_WARNINGS.add(one_line(message))
            print_warning(message)
        else:
            print(message, file=sys.stderr)


def setup_logging(verbose: bool) -> Callable[[], None]:
    """Route library logs to one-line messages; returns the undo (for in-process callers)."""
    logger = logging.getLogger("ptqengine")
    LOGGED_WARNINGS.clear()  # per command (tests and notebooks run several in one process)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in [h for h in logger.handlers if isinstance(h, WarningLines)]:
        logger.removeHandler(handler)
    logger.addHandler(WarningLines())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    # Python warnings raised inside libraries (PIL's DecompressionBombWarning, numpy's RuntimeWarning) become
    # the same one-line warnings instead of a source line dumped on stderr.
    saved_showwarning = warnings.showwarning

    def warning_as_one_line(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                            line: Any = None) -> None:
        logger.warning("%s: %s", category.__name__, str(message).splitlines()[0] if str(message) else "")

    warnings.showwarning = warning_as_one_line

    def restore() -> None:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        warnings.showwarning = saved_showwarning

    return restore


def show_version(value: bool) -> None:
    if value:
        print(f"ptqengine {__version__}")
        raise typer.Exit()


app = typer.Typer(cls=PtqGroup, name="ptqengine", add_completion=False, pretty_exceptions_show_locals=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Post-training-quantization calibration for ONNX models, on CPU or GPU: TensorRT INT8 "
                       "calibration caches and scale tables, Q/DQ ONNX models (TensorRT 11, onnxruntime), Horizon "
                       "Robotics PTQ kits, INT8-vs-FP32 evaluation and per-layer sensitivity analysis.")


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=show_version,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
) -> None:
    # Undone when the command ends, so in-process callers (tests, notebooks) keep their logging.
    ctx.call_on_close(setup_logging(verbose))
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())


for name, command in (("calibrate", calibrate), ("export", export), ("quantize", quantize), ("evaluate", evaluate),
                      ("inspect", inspect), ("merge", merge), ("demo", demo), ("horizon", horizon),
                      ("analyze", analyze), ("select", select)):
    app.command(name, cls=PtqCommand)(command)


def main() -> None:
    """Console-script entry point (`ptqengine`)."""
    try:
        app(prog_name="ptqengine")
    except BrokenPipeError:  # a plain print() to a closed pipe, e.g. `ptqengine demo | head -1`
        stop_writing_stdout()


if __name__ == "__main__":  # pragma: no cover
    main()
