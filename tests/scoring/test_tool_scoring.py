"""The structural tool-call scorer, the call parsers and the free-text metrics."""

from __future__ import annotations

import json

import pytest

from llmops.data import task_api
from llmops.scoring.parsers import ParsedAnswer, get_parser, parse_hermes, parse_task_api
from llmops.scoring.text import chrf, rouge_l
from llmops.scoring.tools import aggregate, same, score_calls

TOOLS = [{"type": "function", "function": {"name": "create_task", "parameters": {
    "type": "object", "properties": {"title": {"type": "string"}, "due": {"type": "string"},
                                     "priority": {"enum": ["low", "high"]}},
    "required": ["title"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "delete_task", "parameters": {
        "type": "object", "properties": {"task_id": {"type": "integer"}}}}}]


def call(name, **args):
    return {"id": "c", "type": "function", "function": {"name": name, "arguments":
                                                        json.dumps(args)}}


def pred(*calls, text="", errors=()):
    return ParsedAnswer([{"name": n, "arguments": a} for n, a in calls], text, list(errors))


def test_arguments_compare_as_parsed_json_with_key_order_free():
    ref = [call("create_task", title="milk", due="2025-01-02")]
    score = score_calls(ref, pred(("create_task", '{"due":"2025-01-02",  "title":"milk"}')),
                        TOOLS)
    assert score["exact"] and score["json_valid"] and score["schema_valid"]
    m = aggregate([score])
    assert (m["exact_match"], m["arg_precision"], m["arg_recall"], m["tool_accuracy"]) == (
        1.0, 1.0, 1.0, 1.0)


def test_partial_arguments_give_precision_and_recall_per_argument():
    ref = [call("create_task", title="milk", due="2025-01-02", priority="high")]
    m = aggregate([score_calls(ref, pred(("create_task", {"title": "milk", "due": "2025-09-09"})),
                               TOOLS)])
    assert m["arg_precision"] == 1 / 2 and m["arg_recall"] == 1 / 3
    assert m["arg_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert (m["exact_match"], m["tool_accuracy"], m["call_exact"]) == (0.0, 1.0, 0.0)
    assert m["schema_valid_rate"] == 1.0


def test_wrong_tool_matches_no_reference_call():
    ref = [call("create_task", title="milk")]
    m = aggregate([score_calls(ref, pred(("delete_task", {"title": "milk"})), TOOLS)])
    assert (m["tool_accuracy"], m["arg_precision"], m["arg_recall"], m["exact_match"]) == (
        0.0, 0.0, 0.0, 0.0)
    # Valid against the schema of the tool it called; a tool the row does not declare is not.
    assert m["json_valid_rate"] == 1.0 and m["schema_valid_rate"] == 1.0
    assert score_calls(ref, pred(("send_email", {})), TOOLS)["schema_valid"] is False


def test_an_extra_call_breaks_the_count_and_the_exact_match_but_not_the_tool_hit():
    ref = [call("delete_task", task_id=4)]
    m = aggregate([score_calls(ref, pred(("delete_task", {"task_id": 4}),
                                         ("delete_task", {"task_id": 5})), TOOLS)])
    assert (m["call_count_accuracy"], m["exact_match"], m["tool_accuracy"]) == (0.0, 0.0, 1.0)
    assert m["arg_precision"] == 1 / 2 and m["arg_recall"] == 1.0


def test_parallel_calls_match_in_any_order():
    ref = [call("delete_task", task_id=4), call("delete_task", task_id=7)]
    score = score_calls(ref, pred(("delete_task", {"task_id": 7}), ("delete_task", {"task_id": 4})))
    assert score["exact"] and score["exact_calls"] == 2


def test_no_call_rows_are_right_when_the_model_does_not_call():
    rows = [score_calls([], pred(text="I can't do that.")),
            score_calls([], pred(("delete_task", {"task_id": 1}))),
            score_calls([], pred(text="{broken", errors=["not JSON"]))]
    m = aggregate(rows)
    assert m["no_call_accuracy"] == 1 / 3 and m["refusal_rate"] == 1 / 3
    assert m["exact_match"] == 1 / 3 and m["json_valid_rate"] is None
    assert m["counts"] == {"total": 3, "call": 0, "no_call": 3}


def test_a_refusal_predicate_decides_no_call_rows_and_false_refusals():
    def refusal(text):
        return text.startswith("Sorry")

    none = score_calls([], pred(text="Paris is nice."), refusal=refusal)
    missed = score_calls([call("delete_task", task_id=1)], pred(text="Sorry, no."), refusal=refusal)
    m = aggregate([none, missed])
    assert (m["no_call_accuracy"], m["refusal_rate"], m["false_refusal_rate"]) == (1.0, 0.0, 1.0)


def test_arguments_that_are_not_json_are_invalid_and_score_no_argument():
    m = aggregate([score_calls([call("create_task", title="milk")],
                               pred(("create_task", '{"title": "milk"')), TOOLS)])
    assert (m["json_valid_rate"], m["schema_valid_rate"], m["arg_precision"]) == (
        0.0, 0.0, None)
    assert m["arg_recall"] == 0.0 and m["tool_accuracy"] == 1.0


def test_schema_validity_catches_a_wrong_type_and_an_unknown_argument():
    ref = [call("create_task", title="milk")]
    assert score_calls(ref, pred(("create_task", {"title": 5})), TOOLS)["schema_valid"] is False
    assert score_calls(ref, pred(("create_task", {"title": "m", "x": 1})),
                       TOOLS)["schema_valid"] is False
    assert score_calls(ref, pred(("create_task", {"title": "m"})))["schema_valid"] is None


def test_same_compares_numbers_by_value_but_not_booleans_with_numbers():
    assert same({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not same({"a": True}, {"a": 1}) and not same([1, 2], [2, 1])


def test_task_api_parser_reads_the_tiny_models_syntax():
    assert parse_task_api('{"tool":"delete_task","arguments":{"task_id":3}}') == ParsedAnswer(
        [{"name": "delete_task", "arguments": {"task_id": 3}}])
    assert parse_task_api(task_api.REFUSAL) == ParsedAnswer([], task_api.REFUSAL)
    assert parse_task_api('{"tool":"delete_task"').errors != []
    assert parse_task_api('{"action":"delete_task","params":{}}').calls == []


def test_hermes_parser_reads_tool_call_blocks_and_the_text_around_them():
    out = parse_hermes('Sure.\n<tool_call>\n{"name": "delete_task", "arguments": {"task_id": 3}}'
                       '\n</tool_call>\n<tool_call>\n{"name": oops}\n</tool_call>')
    assert out.calls == [{"name": "delete_task", "arguments": {"task_id": 3}}]
    assert out.text == "Sure." and out.errors == ["<tool_call> block 1 is not JSON (Expecting "
                                                  "value)"]
    with pytest.raises(ValueError, match="'qwen' is not one of task_api, hermes"):
        get_parser("qwen")


@pytest.mark.parametrize("syntax,good,doubled", [
    ("task_api", '{"tool":"delete_task","arguments":{"task_id":3}}',
     '{"tool":"delete_task","arguments":"{\\"task_id\\":3}"}'),
    ("hermes", '<tool_call>\n{"name": "delete_task", "arguments": {"task_id": 3}}\n</tool_call>',
     '<tool_call>\n{"name": "delete_task", "arguments": "{\\"task_id\\": 3}"}\n</tool_call>'),
    ("llama3_json", '{"name": "delete_task", "parameters": {"task_id": 3}}',
     '{"name": "delete_task", "parameters": "{\\"task_id\\": 3}"}'),
])
def test_a_double_encoded_call_is_a_syntax_error_not_a_call(syntax, good, doubled):
    """Every native syntax writes arguments as an object: a JSON string holding them (what a model
    trained on string arguments writes) is refused, counted, and scores neither exact nor valid."""
    parse = get_parser(syntax)
    assert parse(good).calls == [{"name": "delete_task", "arguments": {"task_id": 3}}]
    out = parse(doubled)
    assert out.calls == [] and out.double_encoded == 1 and len(out.errors) == 1
    assert "arguments as a JSON string, not an object (double-encoded" in out.errors[0]
    listed = parse(good.replace('{"task_id":3}', "[3]").replace('{"task_id": 3}', "[3]"))
    assert listed.calls == [] and listed.double_encoded == 0
    assert "arguments that are not an object (got list)" in listed.errors[0]
    ref = [call("delete_task", task_id=3)]  # the stored OpenAI form: arguments as JSON text
    m = aggregate([score_calls(ref, parse(good), TOOLS), score_calls(ref, parse(doubled), TOOLS)])
    assert (m["exact_match"], m["json_valid_rate"], m["double_encoded_rate"]) == (0.5, 0.5, 0.5)


def test_openai_protocol_string_arguments_are_still_read():
    """A call as an OpenAI-compatible endpoint returns it (arguments are JSON text by protocol)
    scores like the object it holds."""
    ref = [call("create_task", title="milk")]
    s = score_calls(ref, pred(("create_task", '{"title": "milk"}')), TOOLS)
    assert s["exact"] and s["json_valid"] and s["double_encoded"] == 0


def test_rouge_l_and_chrf_on_known_cases():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    # LCS "the cat on the mat" = 5 of 6 predicted words and 5 of 5 reference words.
    assert rouge_l(["the cat sat on the mat"], ["the cat on the mat"]) == pytest.approx(10 / 11)
    assert chrf(["abc def"], ["abc def"]) == pytest.approx(1.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    assert rouge_l([], []) is None and chrf([], []) is None
    with pytest.raises(ValueError, match="got 1 predictions for 2 references"):
        rouge_l(["a"], ["a", "b"])


def test_converters_checks_and_scorers_import_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, llmops.data.convert, llmops.data.detect, llmops.data.toolcheck, "
            "llmops.data.readers, llmops.data.prepare, llmops.scoring.tools, llmops.scoring.text; "
            "heavy = ('torch', 'transformers', 'datasets', 'pyarrow', 'rouge_score', 'sacrebleu'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
