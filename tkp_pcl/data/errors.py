"""The one error the data sets raise."""

from __future__ import annotations


class DataError(FileNotFoundError):
    """A data set is missing or malformed; the message names the path."""
