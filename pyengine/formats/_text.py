"""Reading a text file for the format readers, with one-line PtqErrors naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ..errors import FormatError, PtqError


def read_utf8(path: Union[str, Path], what: str) -> str:
    """The file's text; `what` names the expected format in the error for binary content."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PtqError(f"{p}: file not found") from None
    except OSError as exc:
        raise PtqError(f"{p}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise FormatError(f"{p}: not {what} (not UTF-8 text)") from None
