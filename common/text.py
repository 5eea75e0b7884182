"""Showing text a client chose: bounded and escaped, so it cannot flood or forge a log line.

Every client-supplied string (ids, task ids, codec plans, Leave reasons,
tensor names) that reaches an error message or a log line goes through
``shown``: at most ``limit`` characters, control characters (newlines
included) escaped as ``repr`` escapes them, and the cut said.
"""

from __future__ import annotations

SHOWN_CHARACTERS = 200


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` quoted and escaped (no newline survives), cut to ``limit`` characters with the length said."""
    head = repr(text[:limit])
    return head if len(text) <= limit else f"{head}... ({len(text)} characters)"
