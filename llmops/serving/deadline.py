"""A total time bound on one blocking call (an HTTP request through a sync client). Pure.

A client's timeout bounds each read, so a server that trickles one byte a second holds a request
forever. `within` runs the call in a daemon thread and stops waiting at the deadline: the caller
goes on (with DeadlineExceeded naming the bound), and the abandoned thread ends with its
connection; being a daemon it never keeps the process alive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call did not finish within its total time bound."""


def within(total_s: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Returns fn(*args, **kwargs), or raises what it raised, if it finishes within total_s.

    Raises:
        DeadlineExceeded: fn is still running after total_s seconds.
    """
    done: dict[str, Any] = {}

    def call() -> None:
        try:
            done["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller below
            done["error"] = exc

    thread = threading.Thread(target=call, name="llmops-deadline", daemon=True)
    thread.start()
    thread.join(total_s)
    if thread.is_alive():
        raise DeadlineExceeded(f"no complete answer within limits.http_total_seconds={total_s:g} s")
    if "error" in done:
        raise done["error"]
    return done["value"]
