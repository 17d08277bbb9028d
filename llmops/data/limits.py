"""The bounds on untrusted data the data stage works under (``limits.*`` of the config).

The values come from the compiled params (``conf/config.yaml`` holds the defaults); this only
carries them, frozen and hashable, into the batch functions (``Converter``, ``toolcheck``,
``lengths``), where ``Dataset.map`` workers get them pickled. ``time_limit`` bounds a block of
Python code in time (the chat-template renders).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """The data stage's bounds (see ``LimitsConfig`` in llmops/config/schema.py).

    Attributes:
        row_bytes: Largest row (a JSON Lines line, a JSON array element) in bytes.
        json_depth: Deepest nesting of a row, a tool's schema or a call's arguments.
        pattern_seconds: Time a row's schema ``pattern`` checks may take.
        template_seconds: Time one chat-template render may take.
        glob_files_warn: A glob matching more files than this warns once.
    """

    row_bytes: int
    json_depth: int
    pattern_seconds: float
    template_seconds: float
    glob_files_warn: int

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Limits:
        """Returns the limits a stage's ``limits`` params hold (their keys:
        ``llmops.compiler.builders.data.DataLimits``)."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})


#: The keys of ``limits`` the data stage's params carry.
DATA_KEYS = tuple(f.name for f in fields(Limits))


class TimeLimit(Exception):
    """Work bounded by ``time_limit`` ran past its bound."""

    def __init__(self, seconds: float):
        super().__init__(seconds)  # args = (seconds,): it pickles back from a map worker
        self.seconds = seconds

    def __str__(self) -> str:
        return f"took longer than {self.seconds:g} s"


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raises ``TimeLimit`` in the block when it runs longer than ``seconds`` (SIGALRM, which
    interrupts Python code such as a Jinja render or ``re``); no bound when ``seconds`` is None
    or outside the main thread (signals reach only it), where callers bound the work otherwise.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise TimeLimit(seconds)

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
