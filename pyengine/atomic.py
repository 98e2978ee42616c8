"""Atomic file output: write to a temporary file beside the target, fsync, then rename.

A crash or Ctrl-C leaves either the old file or the new one, never a half-written one. Inside
`atomic_group()` the renames wait for the group to end cleanly, so the outputs of one run are replaced
together or not at all.

The rename replaces whatever the name points at, so it is used for regular files (or new names) only:
- a character device or FIFO (`-o /dev/null`, `-o /dev/stdout`, a named pipe) is written through, as a
  shell redirection would, and never replaced by a regular file;
- a symbolic link is refused: renaming over it would replace the link, and following it lets whoever
  planted the link choose which file we overwrite (we may run as root); except a link to a character
  device or FIFO (`-o /dev/stdout` into a pipe or terminal), which is followed and written through:
  nothing is replaced, and the opened file is checked to be such a stream before a byte is written;
- a directory, block device or socket is refused.
Write errors (disk full, file size limit, read-only file system) are PtqErrors naming the file.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator, List, Tuple, Union

from .errors import PtqError

PathLike = Union[str, "os.PathLike[str]"]

_group = threading.local()  # .pending: [(temporary file, target)] while an atomic_group is open


def output_kind(path: PathLike) -> str:
    """'new', 'file' or 'stream' (a character device or FIFO, written through); PtqError for anything else."""
    target = Path(path)
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):  # the folder's checks say what is wrong
        return "new"
    except OSError as exc:
        raise PtqError(f"{target}: cannot write here ({exc.strerror})") from None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if _is_stream(st.st_mode):
        return "stream"
    if stat.S_ISLNK(st.st_mode):
        try:
            if _is_stream(os.stat(target).st_mode):
                return "stream"
        except OSError:  # dangling, or a loop: refused below as a link
            pass
    what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
            else "a block device" if stat.S_ISBLK(st.st_mode) else "not a regular file")
    raise PtqError(f"{target}: is {what}; refused as an output (give a regular file's name)")


def _is_stream(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _write_error(target: Path, exc: OSError) -> PtqError:
    return PtqError(f"{target}: cannot write ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; on clean exit it replaces `path` (see the module docstring)."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes only: mode 'w' or 'wb'")
    target = Path(path)
    # surrogateescape: a file name that is not UTF-8 (a model's path in a summary) is written as its bytes
    text = {} if "b" in mode else {"encoding": encoding, "errors": "surrogateescape", "newline": "\n"}
    if output_kind(target) == "stream":
        yield from _write_through(target, mode, text)
        return
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise PtqError(f"{target}: output directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise PtqError(f"{target}: cannot write here ({exc.strerror})") from None
    try:
        try:
            with os.fdopen(fd, mode, **text) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.filename is not None:  # an error of another file, raised by the caller's code
                raise
            raise _write_error(target, exc) from None
        os.chmod(tmp, 0o644)
        pending = getattr(_group, "pending", None)
        if pending is not None:
            pending.append((tmp, target))
        else:
            _replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_through(target: Path, mode: str, text: dict) -> Iterator[IO]:
    # no O_CREAT / O_TRUNC: nothing is created or emptied. The name may have changed since it was checked
    # (a link swapped for one to a regular file): what was opened is checked before anything is written.
    try:
        fd = os.open(target, os.O_WRONLY)
    except OSError as exc:
        raise PtqError(f"{target}: cannot write ({exc.strerror})") from None
    if not _is_stream(os.fstat(fd).st_mode):
        os.close(fd)
        raise PtqError(f"{target}: changed while it was opened; refused as an output")
    try:
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise _write_error(target, exc) from None


def _replace(tmp: str, target: Path) -> None:
    if output_kind(target) not in ("new", "file"):  # it changed while we wrote
        raise PtqError(f"{target}: is no longer a regular file; not replaced")
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(target, exc) from None


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Regular files written atomically inside replace their targets together when the block ends without
    an error; after an error none does (their temporary files are removed). Devices and FIFOs, which are
    written through and never replaced, take their bytes at once. Groups do not nest: an inner group joins
    the outer one."""
    if getattr(_group, "pending", None) is not None:
        yield
        return
    pending: List[Tuple[str, Path]] = []
    _group.pending = pending
    try:
        yield
    except BaseException:
        _group.pending = None
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _group.pending = None
    try:
        for i, (tmp, target) in enumerate(pending):
            _replace(tmp, target)
    except BaseException:
        for tmp, _ in pending[i:]:  # the one that failed and those after it
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
