"""Marking user-provided text inside the bot's Markdown messages.

`literal(text)` wraps text typed by a user (or a directory field) so that `rooms.messages.render`
shows it exactly as typed: no Markdown, no HTML, no links or images coming from it. The
markers are private-use characters, invisible in neither output: render() removes them from
`body` and escapes what they enclose in `formatted_body`. Pure text, no dependency, so the
domain layer can use it.
"""
from __future__ import annotations

import re

OPEN, CLOSE = "\ue000", "\ue001"
_STRIP = str.maketrans("", "", OPEN + CLOSE)
LITERAL_RE = re.compile(f"{OPEN}([^{OPEN}{CLOSE}]*){CLOSE}")


def literal(text: object) -> str:
    """`text` to be shown verbatim in a rendered message (markers inside it are dropped, so a
    user cannot close the span early, and literal(literal(x)) == literal(x))."""
    return OPEN + str(text).translate(_STRIP) + CLOSE


def unmark(text: str) -> str:
    """The text as a reader sees it: literal() markers removed."""
    return text.translate(_STRIP)
