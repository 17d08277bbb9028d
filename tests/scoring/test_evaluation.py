"""Metric and gate functions of llmops.scoring (the structural scorer's Task-API metrics, gates),
on hand-made predictions."""

from __future__ import annotations

import pytest

from llmops.data.task_api import REFUSAL, SYSTEM_PROMPT, TOOL_SCHEMAS, format_call, tool_call
from llmops.errors import StageError
from llmops.scoring.gates import check_gates, validate_gates
from llmops.scoring.metrics import METRICS, metric_deltas
from llmops.scoring.parsers import parse_task_api
from llmops.scoring.tools import score_tool_rows


def _row(answer: dict, kind: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "request"},
            {"role": "assistant", **answer},
        ],
        "tools": TOOL_SCHEMAS,
        "meta": {"source": "task_api", "kind": kind},
    }


def _calls(tool: str, args: dict) -> dict:
    return {"content": None, "tool_calls": [tool_call(tool, args, "call_1")]}


CREATE = {"title": "buy milk", "priority": "high"}
ROWS = [
    _row(_calls("create_task", CREATE), "tool_call"),
    _row(_calls("create_task", CREATE), "tool_call"),
    _row(_calls("delete_task", {"task_id": 7}), "tool_call"),
    _row(_calls("delete_task", {"task_id": 7}), "tool_call"),
    _row({"content": REFUSAL}, "refusal"),
    _row({"content": REFUSAL}, "refusal"),
]
PREDICTIONS = [
    '{"arguments": {"priority": "high", "title": "buy milk"}, "tool": "create_task"}',  # reordered
    format_call("create_task", {"title": "buy bread", "priority": "high"}),  # wrong argument
    REFUSAL,  # false refusal on a tool row
    "delete task 7 please",  # not JSON
    "Sorry, I cannot do that.",  # refusal worded differently
    format_call("delete_task", {"task_id": 7}),  # should have refused
]


def _metrics(rows, predictions):
    return score_tool_rows(rows, predictions, parse_task_api)[0]


def test_task_api_metrics_exact_values():
    m = _metrics(ROWS, PREDICTIONS)
    assert m["exact_match"] == pytest.approx(2 / 6)
    assert m["json_valid_rate"] == pytest.approx(2 / 4)
    assert m["refusal_rate"] == pytest.approx(1 / 2)
    assert m["false_refusal_rate"] == pytest.approx(1 / 4)
    assert m["tool_accuracy"] == pytest.approx(2 / 4)
    # 3 arguments right, of 5 predicted (the call on a refusal row counts; precision 3/5) and
    # 6 expected (recall 1/2)
    assert m["arg_f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    assert m["schema_valid_rate"] == pytest.approx(2 / 4)
    assert m["per_tool"] == {"create_task": 0.5, "delete_task": 0.0}
    assert m["counts"] == {"total": 6, "call": 4, "no_call": 2, "text": 0}


def test_perfect_predictions_score_one():
    m = _metrics(ROWS, [format_call("create_task", CREATE)] * 2
                 + [format_call("delete_task", {"task_id": 7})] * 2 + [REFUSAL] * 2)
    assert [m[k] for k in METRICS] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert m["per_tool"] == {"create_task": 1.0, "delete_task": 1.0}


def test_rates_are_none_without_rows_of_their_kind():
    metrics, per_row = score_tool_rows([_row({"content": "Paris"}, "text")], [" Paris "],
                                       parse_task_api)
    assert per_row == [None]
    assert {metrics[k] for k in METRICS} == {None}
    assert metrics["counts"]["text"] == 1


def test_per_row_scores_name_the_kind_and_the_parsed_calls():
    _, per_row = score_tool_rows(ROWS, PREDICTIONS, parse_task_api)
    assert per_row[0]["kind"] == "call" and per_row[0]["exact"] is True
    assert per_row[0]["calls"] == [{"name": "create_task", "arguments": CREATE}]
    assert per_row[4]["kind"] == "no_call" and per_row[4]["exact"] is True
    assert per_row[5]["exact"] is False


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 rows but 1 answers"):
        score_tool_rows(ROWS[:2], PREDICTIONS[:1], parse_task_api)


GATES = {
    "accuracy": {"metric": "exact_match", "threshold": 0.6, "direction": "min"},
    "format": {"metric": "json_valid_rate", "threshold": 0.9, "direction": "min"},
    "false_refusals": {"metric": "false_refusal_rate", "threshold": 0.1},
    "no_regression": {"metric": "exact_match", "tolerance": 0.05},
}
BASE = {"exact_match": 0.5, "json_valid_rate": 0.8, "refusal_rate": 0.5, "false_refusal_rate": 0.0}


def test_check_gates_values_and_margins():
    tuned = {"exact_match": 0.7, "json_valid_rate": 0.85, "false_refusal_rate": 0.05}
    results, passed = check_gates(GATES, tuned, BASE)
    by = {r["name"]: r for r in results}
    assert passed is False
    assert by["accuracy"]["passed"] is True
    assert by["accuracy"]["margin"] == pytest.approx(0.1)
    assert by["format"]["passed"] is False
    assert by["format"]["margin"] == pytest.approx(-0.05)
    assert by["false_refusals"]["direction"] == "max"  # the metric's natural direction
    assert by["false_refusals"]["passed"] is True
    assert by["false_refusals"]["margin"] == pytest.approx(0.05)
    nr = by["no_regression"]
    assert (nr["threshold"], nr["base"], nr["tolerance"]) == (pytest.approx(0.45), 0.5, 0.05)
    assert nr["passed"] is True
    assert set(by["accuracy"]) >= {
        "name",
        "metric",
        "value",
        "threshold",
        "direction",
        "passed",
        "margin",
    }


def test_no_regression_fails_below_base_minus_tolerance():
    gates = {"no_regression": {"metric": "exact_match", "tolerance": 0.0}}
    results, passed = check_gates(gates, {"exact_match": 0.49}, BASE)
    assert passed is False
    assert results[0]["margin"] == pytest.approx(-0.01)
    _, passed_equal = check_gates(gates, {"exact_match": 0.5}, BASE)
    assert passed_equal is True


def test_no_regression_on_a_max_metric_allows_base_plus_tolerance():
    gates = {"no_regression": {"metric": "false_refusal_rate", "tolerance": 0.1}}
    results, passed = check_gates(gates, {"false_refusal_rate": 0.1}, BASE)
    assert passed is True
    assert results[0]["threshold"] == pytest.approx(0.1)


def test_unmeasured_metric_is_skipped_not_failed():
    results, passed = check_gates(
        {"safety": {"metric": "refusal_rate", "threshold": 0.8}}, {"refusal_rate": None}, BASE
    )
    assert passed is True
    assert results[0]["skipped"] is True
    assert "refusal_rate was not measured" in results[0]["reason"]


def test_no_gates_pass():
    assert check_gates(None, {}, {}) == ([], True)
    assert check_gates({}, {}, {}) == ([], True)


def test_unknown_metric_raises_with_key_and_suggestion():
    with pytest.raises(StageError) as err:
        check_gates({"accuracy": {"metric": "exact_mach", "threshold": 0.5}}, {}, {})
    assert "eval.gates.accuracy.metric: 'exact_mach' is not one of" in str(err.value)
    assert "Did you mean 'exact_match'?" in str(err.value)


def test_validate_gates_collects_every_problem():
    problems = validate_gates(
        {
            "a": {"metric": "bleu", "threshold": 0.5},
            "b": {"metric": "exact_match", "threshold": "high", "direction": "up"},
            "no_regression": {"metric": "exact_match", "tolerance": -1},
            "c": 3,
        }
    )
    assert [p.key for p in problems] == [
        "eval.gates.a.metric",
        "eval.gates.b.direction",
        "eval.gates.b.threshold",
        "eval.gates.no_regression.tolerance",
        "eval.gates.c",
    ]
    assert str(problems[3]) == "eval.gates.no_regression.tolerance: must be >= 0 (got -1)."


def test_metric_deltas():
    deltas = metric_deltas({"exact_match": 0.75, "refusal_rate": None}, BASE)
    assert deltas["exact_match"] == pytest.approx(0.25)
    assert deltas["refusal_rate"] is None
    assert set(deltas) == set(METRICS)
