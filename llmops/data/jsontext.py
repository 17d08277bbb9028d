"""Parses JSON text fast: ``orjson`` where it reads exactly what ``json.loads`` reads, else
``json``; and keys parsed values by their ``orjson`` text for caches.

``orjson.loads`` rejects NaN/Infinity, numbers out of a double's range and lone surrogates
(``json`` accepts them) and reads integers of 19 digits or more that overflow 64 bits as floats
(``json`` keeps them exact): the first raise, and text with such a digit run is not handed to
``orjson``, so those fall back to ``json.loads`` with its own value or error. Written files are
still encoded by ``json`` (their bytes must not change).

``loads(text, max_depth)`` refuses text nested deeper than ``max_depth`` before parsing it
(``TooDeep``, measured without recursion), and text too deep for Python's own parser
(``RecursionError``) raises ``TooDeep`` too, never the RecursionError.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Digits to "0", any other byte to " ": a run of 19 "0"s is a run of 19 digits (a byte table
# and a substring search, ten times faster than a regular expression on a row's text).
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


# A JSON string (escapes included) or a run of characters that are neither brackets nor quotes.
_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+')
_EMPTY_PAIR = re.compile(r"\{\}|\[\]")


class TooDeep(json.JSONDecodeError):
    """JSON text nested deeper than allowed (or than Python's parser can go)."""

    def __init__(self, text: str, max_depth: int | None):
        self.max_depth = max_depth
        what = (f"nested deeper than limits.json_depth={max_depth}" if max_depth is not None
                else "nested too deep for Python's JSON parser")
        super().__init__(what, text[:1], 0)


def too_deep(text: str, max_depth: int) -> bool:
    """Tells whether JSON text nests objects and arrays deeper than ``max_depth`` levels.

    No recursion and no parse: strings and scalars are cut out by one regular expression, then
    each round removes the innermost empty pairs, so a text N levels deep empties in N rounds;
    only ``max_depth`` rounds are run. Text whose brackets do not pair is not called deep (the
    parser reports it).
    """
    if text.count("{") + text.count("[") <= max_depth:
        return False
    brackets = _NOT_BRACKETS.sub("", text)
    for _ in range(max_depth):
        fewer = _EMPTY_PAIR.sub("", brackets)
        if fewer == brackets or not fewer:
            return False
        brackets = fewer
    return _EMPTY_PAIR.search(brackets) is not None


def loads(text: str, max_depth: int | None = None) -> Any:
    """Returns what ``json.loads(text)`` returns, parsed by ``orjson`` where that is the same.

    Args:
        text: JSON text.
        max_depth: Deepest nesting of objects and arrays allowed; None for any Python can parse.

    Raises:
        TooDeep: If the text nests deeper than ``max_depth`` or than Python's parser can go.
        json.JSONDecodeError: As ``json.loads`` raises it (its message and column).
    """
    if max_depth is not None and too_deep(text, max_depth):
        raise TooDeep(text, max_depth)
    try:
        return _loads(text)
    except RecursionError:
        raise TooDeep(text, None) from None


def _loads(text: str) -> Any:
    if _LONG_RUN not in text.encode("utf-8", "surrogatepass").translate(_DIGITS):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json.loads decides (NaN, Infinity, lone surrogates) or raises its own error
    return json.loads(text)


def key(value: Any) -> str | None:
    """Returns JSON text that ``json.loads`` turns back into exactly ``value`` (types kept:
    ``1``, ``1.0`` and ``true`` differ), for caching by value; None when there is none this
    cheap (NaN or Infinity, which ``orjson`` writes as null, or integers past 64 bits)."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    return None if b"null" in text else text.decode()
