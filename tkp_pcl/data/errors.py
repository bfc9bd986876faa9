"""The one error the data sets raise."""

from __future__ import annotations


class DataError(FileNotFoundError):
    """A data set is missing or malformed; the message names the path."""


class DataWriteError(OSError):
    """Prepared data could not be written (a full disk, a folder turned read-only): a fault, not
    bad input; the message names the path and says that nothing was changed."""
