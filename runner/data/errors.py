"""The one exception the data layer raises for bad user input: it names the file, what was expected, and what to do."""
from __future__ import annotations


class DataError(Exception):
    """A data source is missing, malformed or inconsistent with the spec (message says the fix)."""
