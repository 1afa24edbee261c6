"""Named errors raised at the edges, each message naming the file or field at fault."""


class DataError(ValueError):
    """A data file is missing, unreadable or not what was expected (the message names it)."""
