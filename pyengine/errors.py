"""The one exception family for user errors: the CLI prints its message on one line, exit code 2.

Anything else escaping the library is a bug and may show a traceback.
"""
from __future__ import annotations


class PtqError(Exception):
    """A user-facing error: bad input, bad option, unreadable or unwritable file."""


class ModelError(PtqError):
    """The model file is missing, not ONNX, or cannot be run."""


class DataError(PtqError):
    """Calibration data is missing, unreadable, or does not fit the model."""


class OptionError(PtqError):
    """An option value is invalid or two options contradict each other."""


class FormatError(PtqError):
    """A file we were asked to read is not in the format it claims."""
