"""The runner's one way from a stage kind to its code, through core's stage table.

Every place that runs a stage by its kind (the runner's loop, the stage process, a rank of a
launched training job) asks here; nothing else in llmops turns a name into a module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llmops.core.plan import stage_module


def stage(kind: str) -> ModuleType:
    """Imports and returns the module that implements a stage kind (`stage_module(kind)`).

    Raises:
        KeyError: When kind is not in the stage table.
    """
    return importlib.import_module(stage_module(kind))
