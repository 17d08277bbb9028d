"""Expands a multirun command line into its points, with Hydra's own override parser."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def expand_points(overrides: Sequence[str]) -> list[list[str]]:
    """Returns the override list of every point of a grid sweep (Hydra basic sweeper order).

    Sweeps Hydra cannot enumerate (ranges for Optuna, intervals) are checked at their first
    value only.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    axes: list[list[str]] = []
    for ov in parser.parse_overrides(list(overrides)):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:  # interval()/tag() sweeps have no finite list of values
                values = []
            axes.append([f"{key}={v}" for v in values] or [])
            if not values:
                axes.pop()
        else:
            axes.append([ov.input_line])
    return [list(p) for p in itertools.product(*axes)]
