"""User-facing errors: the CLI prints them as one line and exits non-zero."""

import re


class DrtError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (terminal colour codes removed), or its type name."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
