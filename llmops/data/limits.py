"""The bounds on untrusted data the data stage works under (``limits.*`` of the config).

The values come from the compiled params (``conf/config.yaml`` holds the defaults); this only
carries them, frozen and hashable, into the batch functions (``Converter``, ``toolcheck``,
``lengths``), where ``Dataset.map`` workers get them pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        """Returns the limits a stage's ``limits`` params hold (keys as PARAMS.md lists)."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})


#: The keys of ``limits`` the data stage's params carry.
DATA_KEYS = tuple(f.name for f in fields(Limits))
