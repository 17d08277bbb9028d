"""Reusable constrained types of the config schema, and the bounds the libraries downstream accept.

Every group model uses STRICT: unknown keys are errors, `true` never becomes 1 (nor 1.0), a string
never becomes a number, and inf/nan are rejected in every float field (lists included). Bounds
below are what numpy, torch and the trainers accept, or sane limits well above any real run, so a
value that passes validation does not fail later with an overflow.

Pure: imports no torch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

# Each model's validator and serializer are built with its class (no defer_build): a group's
# model, built before AppConfig, lends AppConfig its core schema, and a run dumps every group's
# model (model_dump) anyway, so a deferred build generated each group's schema twice.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

MAX_STEPS = 10_000_000  # optimiser steps (and logging/saving/warm-up intervals)
MAX_EPOCHS = 1_000
MAX_BATCH = 65_536  # rows per step, accumulation steps
MAX_TOKENS = 2**24  # sequence lengths and generation budgets
MAX_ROWS = 100_000_000  # generated rows, evaluation limits, prompts
MAX_DIM = 2**20  # layers, widths, heads of a model
MAX_AMOUNT = 10**12  # money, hours and counts of a business case
MAX_TIMEOUT_S = 86_400.0  # one day


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


def _names(value: str | list[str]) -> str | list[str]:
    if isinstance(value, str):
        return _not_blank(value)
    if not value:
        raise PydanticCustomError("empty_list", "must not be an empty list")
    if not all(name.strip() for name in value):
        raise PydanticCustomError("blank", "must not hold an empty name")
    return value


#: A string with at least one non-space character (names, paths, ids, hosts).
Text = Annotated[str, AfterValidator(_not_blank)]
#: A seed numpy and torch both accept: 0 ≤ seed < 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: Optimiser steps, or an interval in steps (logging, saving).
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
#: Rows per step (per device), or accumulation steps.
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
#: A number of tokens (a generation budget).
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
#: A number of rows, documents or prompts.
Rows = Annotated[int, Field(ge=1, le=MAX_ROWS)]
#: A model dimension: layers, widths, heads.
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
#: A timeout in seconds.
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)]
#: A learning rate: > 0 and < 1.
LearningRate = Annotated[float, Field(gt=0, lt=1)]
#: A share or a rate: 0..1.
Fraction = Annotated[float, Field(ge=0, le=1)]
#: A money amount, hours or a count of a business case: 0..MAX_AMOUNT.
Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT)]
#: A count of a business case (queries, tasks, examples): 0..MAX_AMOUNT.
Count = Annotated[int, Field(ge=0, le=MAX_AMOUNT)]
#: One name (or pattern), or a non-empty list of names.
Names = Annotated[str | list[str], AfterValidator(_names)]
