"""GRPO's rewards, chosen by name from what eval measures: one registry, pure.

Each reward scores one completion against its row the way eval scores a test row: the answer is
read in the model's own call syntax (``parsers.parser_for`` of its chat template) and compared by
``tools.score_calls`` with the row's reference calls and tools; a free-text row's answer is
compared with its reference text by eval's text scorers (``text.rouge_l_scores``,
``text.chrf_scores``: ROUGE-L F1 and sentence chrF). A reward is named as eval names the metric it
is the per-row form of (``exact_match``, ``json_valid_rate``, ``rouge_l``, ...), so the reward
GRPO raises and the gate that releases the model measure the same thing. A reward that does not
apply to a row (schema validity of a must-refuse row, a call reward on a free-text row, ROUGE-L
on a call row) is None: TRL leaves it out of that row's sum. Config names rewards
(``train.grpo.rewards: {exact_match: 1.0}``), never code.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmops.data import task_api
from llmops.scoring.parsers import ParsedAnswer, split_reasoning
from llmops.scoring.split import reference_text
from llmops.scoring.text import chrf_scores, rouge_l_scores
from llmops.scoring.tools import reference_calls, row_kind, score_calls


@dataclass(frozen=True)
class Reward:
    """One reward: its name (the metric's), what it measures, the rows it scores ("calls": tool
    and must-refuse rows; "text": free-text rows), and its per-row value of an answer (the
    parsed answer, and its text for a text reward)."""

    name: str
    measures: str
    rows: str
    score: Callable[[Mapping[str, Any], ParsedAnswer, str], float | None]

    def value(self, row: Mapping[str, Any], parsed: ParsedAnswer, answer: str = ""
              ) -> float | None:
        """Returns the reward of one answer to one row; None when it does not apply there."""
        if (row_kind(row) == "text") != (self.rows == "text"):
            return None
        return self.score(row, parsed, answer)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _calls_only(fn: Callable[[dict], float | None]) -> Callable[[dict], float | None]:
    return lambda s: fn(s) if s["kind"] == "call" else None


#: Every reward GRPO can use, by name: (what it measures, its value from ``score_calls``' row).
_TABLE: dict[str, tuple[str, Callable[[dict], float | None]]] = {
    "exact_match": ("1 when the answer is right: every expected call, right tool and equal "
                    "arguments, nothing more; for a must-refuse row, a refusal and no call",
                    lambda s: float(s["exact"])),
    "tool_accuracy": ("share of the expected calls whose tool the answer called (call rows)",
                      _calls_only(lambda s: _ratio(s["tool_hits"], s["n_ref"]))),
    "call_exact": ("share of the expected calls answered with equal arguments (call rows)",
                   _calls_only(lambda s: _ratio(s["exact_calls"], s["n_ref"]))),
    "arg_f1": ("F1 of the top-level arguments of the matched calls (call rows)",
               _calls_only(lambda s: _ratio(2 * s["arg_tp"], s["arg_ref"] + s["arg_pred"])
                           or 0.0)),
    "json_valid_rate": ("1 when the answer holds calls whose arguments all parse as JSON "
                        "(call rows)", _calls_only(lambda s: float(s["json_valid"]))),
    "schema_valid_rate": ("1 when every call names a declared tool and its arguments validate "
                          "against that tool's JSON Schema (call rows)",
                          _calls_only(lambda s: float(bool(s["schema_valid"])))),
    "refusal_rate": ("1 when a must-refuse row is declined with no call (must-refuse rows)",
                     lambda s: float(s["refused"]) if s["kind"] == "no_call" else None),
    "call_count_accuracy": ("1 when the answer makes as many calls as expected (call rows)",
                            _calls_only(lambda s: float(s["count_ok"]))),
}
#: The free-text rewards: eval's per-row text scores of the answer (its reasoning left out, as
#: eval leaves it out) against the row's reference text.
_TEXT: dict[str, tuple[str, Callable[[list[str], list[str]], list[float]]]] = {
    "rouge_l": ("ROUGE-L F1 of the answer against the reference text (free-text rows)",
                rouge_l_scores),
    "chrf": ("sentence chrF / 100 of the answer against the reference text (free-text rows)",
             chrf_scores),
}
REWARDS: dict[str, Reward] = {
    **{name: Reward(name, what, "calls", lambda row, parsed, _, fn=fn: fn(score_row(row, parsed)))
       for name, (what, fn) in _TABLE.items()},
    **{name: Reward(name, what, "text", lambda row, _, answer, fn=fn: fn(
        [split_reasoning(answer)[1]], [reference_text(row)])[0])
       for name, (what, fn) in _TEXT.items()},
}
#: The rewards that score free-text rows (train.grpo.free_text=reward needs one).
TEXT_REWARDS: tuple[str, ...] = tuple(_TEXT)


def score_row(row: Mapping[str, Any], parsed: ParsedAnswer) -> dict[str, Any]:
    """Returns eval's score of one answer to one row (``tools.score_calls``)."""
    return score_calls(reference_calls(row), parsed, row.get("tools"), task_api.is_refusal)


def checkable(row: Mapping[str, Any], free_text: bool = False) -> bool:
    """Tells whether a reward can check a row's answer: a tool-call or a must-refuse row, and a
    free-text row only with ``free_text`` (the text rewards score it; else GRPO leaves it out)."""
    return row_kind(row) in ("tool", "refusal") or (free_text and row_kind(row) == "text")


def free_text_problems(rewards: Mapping[str, float], free_text: str) -> list[str]:
    """Returns what is wrong with train.grpo.free_text against the rewards' weights: "reward"
    needs a text reward weighing more than 0, and a text reward weighing more than 0 needs
    "reward" (with "leave_out" no row it scores is there)."""
    text = [n for n in TEXT_REWARDS if rewards.get(n, 0) > 0]
    if free_text == "reward" and not text:
        return ["is reward, but train.grpo.rewards weighs no free-text reward above 0. Add one, "
                f"e.g. +train.grpo.rewards.rouge_l=1.0 (text rewards: {', '.join(TEXT_REWARDS)})"
                ", or set train.grpo.free_text=leave_out."]
    if free_text == "leave_out" and text:
        return [f"is leave_out, so no free-text row reaches GRPO and {', '.join(text)} (free-text "
                "rows only) would never score. Set train.grpo.free_text=reward, or set "
                f"{text[0]}'s weight to 0."]
    return []


def unknown_rewards(names: list[str]) -> list[str]:
    """Returns one message per unknown reward name, with a did-you-mean and the known names."""
    out = []
    for name in names:
        if name in REWARDS:
            continue
        near = difflib.get_close_matches(name, list(REWARDS), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        out.append(f"'{name}' is not a reward.{hint} Rewards: {', '.join(REWARDS)} "
                   "(python -m llmops --options train lists what each measures).")
    return out


def describe() -> dict[str, str]:
    """Returns every reward's name and what it measures."""
    return {r.name: r.measures for r in REWARDS.values()}
