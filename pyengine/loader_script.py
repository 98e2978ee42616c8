"""Calibration data from a Python script, as Polygraphy's `--data-loader-script` (and so TensorRT int8 builds) takes it.

`SCRIPT.py[:FUNC]` names a no-argument function (default `load_data`) that returns or yields feed dicts
{input name: array}; each dict may hold one sample or a batch (ptqengine.datasource.split_feed tells them
apart by rank, as for any feed dict). The argument is split as Polygraphy's `parse_script_and_func_name`
splits it: at the last ':' (0.53.6: `rpartition`), nothing after it meaning `load_data`. Where the text
after that ':' is not a Python name (`runs/a:b/loader.py`) Polygraphy would look for a function of that
name and fail; we take the whole argument as the path instead.

A `LoaderScript` is re-iterable: every pass (statistics, then the samples `--algo auto` and the Q/DQ export
measure on) calls the function again, so the function must give the same data each time it is called, as
it must for Polygraphy's calibrator cache to be reproducible. The script is imported once, as Polygraphy
imports it (its directory first on sys.path while it runs), but under a module name of its own so a script
called `data_loader.py` in two directories, or `json.py`, shadows nothing.

Every failure is a DataError naming the script and function: a missing or non-.py file, a missing function,
one that takes arguments, an exception raised by the user's code (its type, message and the script's line,
no traceback), a return value that is not an iterable of dicts, or nothing at all.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError, PtqError

DEFAULT_FUNCTION = "load_data"  # Polygraphy's default


def split_script_argument(text: str) -> "tuple[str, str]":
    """'loader.py:func' -> ('loader.py', 'func'); 'loader.py' or 'loader.py:' -> ('loader.py', 'load_data')."""
    head, sep, tail = text.rpartition(":")
    name = tail.strip()
    if sep and (not name or name.isidentifier()):
        return head, name or DEFAULT_FUNCTION
    return text, DEFAULT_FUNCTION


class LoaderScript:
    """`SCRIPT.py[:FUNC]` checked and imported; iterating it calls FUNC anew and yields its feed dicts."""

    def __init__(self, path: Path, function: str = DEFAULT_FUNCTION):
        self.path = Path(path)
        self.function = function
        self.passes = 0
        self._func = _load_function(self.path, function, str(self))

    @classmethod
    def parse(cls, text: str) -> "LoaderScript":
        path, function = split_script_argument(text)
        return cls(Path(path), function)

    def __str__(self) -> str:
        return f"{self.path}:{self.function}"

    def __repr__(self) -> str:
        return f"LoaderScript({str(self)!r})"

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        returned = self._user_call(self._func)
        if isinstance(returned, (Mapping, str, bytes)) or not isinstance(returned, Iterable):
            raise DataError(f"{self}: returned {type(returned).__name__}; it must return or yield feed dicts "
                            "{input name: array} (a list or a generator of them)")
        iterator = self._user_call(iter, returned)
        count = 0
        try:
            while True:
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                except PtqError:
                    raise
                except Exception as exc:
                    raise self._raised(exc) from None
                if not isinstance(item, Mapping):
                    raise DataError(f"{self}: item {count} is a {type(item).__name__}, not a feed dict "
                                    "{input name: array}")
                count += 1
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()
        if count == 0:
            again = f" when called again (pass {self.passes}): it must give the same data every call" \
                if self.passes > 1 else ""
            raise DataError(f"{self}: yielded no feed dicts{again}")

    def _user_call(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return func(*args)
        except PtqError:
            raise
        except Exception as exc:
            raise self._raised(exc) from None

    def _raised(self, exc: BaseException) -> DataError:
        return DataError(f"{self}: {self.function}() raised {_described(exc, self.path)}")


def _described(exc: BaseException, path: Path) -> str:
    """'ValueError: bad thing (data_loader.py line 7)': the innermost frame in the script, if any."""
    where = ""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    if line is None:
        target = str(path.resolve())
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, target)]
        line = frames[-1].lineno if frames else None
    if line is not None:
        where = f" ({path.name} line {line})"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + message if message else ''}{where}"


def _same_file(filename: str, target: str) -> bool:
    try:
        return str(Path(filename).resolve()) == target
    except (OSError, ValueError):
        return False


def _load_function(path: Path, function: str, label: str) -> Callable[[], Any]:
    if not path.exists():
        raise DataError(f"--data-loader-script {path}: no such file")
    if path.is_dir():
        raise DataError(f"--data-loader-script {path}: is a directory, expected a .py script")
    if path.suffix != ".py":
        raise DataError(f"--data-loader-script {path}: not a .py script")
    module = _import(path)
    func = getattr(module, function, None)
    if func is None:
        defined = sorted(n for n, v in vars(module).items()
                         if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_"))
        raise DataError(f"{label}: {path.name} defines no {function!r} (functions: {', '.join(defined) or 'none'})")
    if not callable(func):
        raise DataError(f"{label}: {function!r} is not a function ({type(func).__name__})")
    try:
        inspect.signature(func).bind()
    except TypeError:
        raise DataError(f"{label}: {function}() must take no arguments (Polygraphy calls it with none)") from None
    except ValueError:
        pass  # no signature to read (a builtin): let the call tell
    return func


def _import(path: Path) -> Any:
    name = "ptqengine_loader_" + hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise DataError(f"--data-loader-script {path}: cannot import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up while the script runs
    sys.path.insert(0, str(path.parent.resolve()))  # sibling imports, as with Polygraphy
    try:
        spec.loader.exec_module(module)
    except PtqError:
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        raise DataError(f"--data-loader-script {path}: importing it raised {_described(exc, path)}") from None
    finally:
        _remove_first(sys.path, str(path.parent.resolve()))
    return module


def _remove_first(items: list, value: str) -> None:
    try:
        items.remove(value)
    except ValueError:
        pass
