"""Reading a text file for the format readers, with one-line PtqErrors naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

from ..errors import FormatError, PtqError


def read_utf8(path: Union[str, Path], what: str, binary_hint: str = "",
              known_binary: Mapping[bytes, str] = {}) -> str:
    """The file's text. `what` names the expected format in errors; `binary_hint` is added when the
    content is not text; `known_binary` maps file signatures to the message that names that file kind."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PtqError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise PtqError(f"{p}: is a directory, expected {what} file") from None
    except OSError as exc:
        raise PtqError(f"{p}: cannot read ({exc.strerror})") from None
    for signature, message in known_binary.items():
        if data.startswith(signature):
            raise FormatError(f"{p}: {message}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{p}: not {what} (binary data, not UTF-8 text{binary_hint})") from None
