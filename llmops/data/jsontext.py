"""Parses JSON text fast: ``orjson`` where it reads exactly what ``json.loads`` reads, else
``json``; and keys parsed values by their ``orjson`` text for caches.

``orjson.loads`` rejects NaN/Infinity, numbers out of a double's range and lone surrogates
(``json`` accepts them) and reads integers of 19 digits or more that overflow 64 bits as floats
(``json`` keeps them exact): the first raise, and text with such a digit run is not handed to
``orjson``, so those fall back to ``json.loads`` with its own value or error. Written files are
still encoded by ``json`` (their bytes must not change).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Digits to "0", any other byte to " ": a run of 19 "0"s is a run of 19 digits (a byte table
# and a substring search, ten times faster than a regular expression on a row's text).
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def loads(text: str) -> Any:
    """Returns what ``json.loads(text)`` returns, parsed by ``orjson`` where that is the same.

    Raises:
        json.JSONDecodeError: As ``json.loads`` raises it (its message and column).
    """
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
