"""GRPO's rewards read a completion in the model family's own call syntax (issue 23): on small
models built on the real Qwen2.5 and Llama 3.1 vocabularies and templates, a call rendered the way
the template writes an assistant tool call (what the model generates, decoded as TRL decodes
completions) goes through the reward functions GRPOTrainer receives
(``backends.grpo.reward_functions`` with ``templates.answer_parser``): the right call scores 1,
wrong arguments 0, broken JSON is not valid JSON, and a double-encoded argument string is never
scored as right."""

from __future__ import annotations

import json

import pytest

TOOLS = [{"type": "function", "function": {
    "name": "create_task", "description": "Adds a task.",
    "parameters": {"type": "object", "properties": {"title": {"type": "string"},
                                                    "priority": {"type": "integer"}},
                   "required": ["title"], "additionalProperties": False}}}]
ARGS = {"title": "buy milk", "priority": 2}


def _row(args) -> dict:
    """A stored grpo train row: its last turn is the expected call (JSON-text arguments)."""
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You manage tasks."},
        {"role": "user", "content": "Add a task: buy milk, priority 2"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "create_task", "arguments": arguments}}]}]}


def _generated(tok, text: str) -> str:
    """The completion GRPOTrainer scores: the answer's tokens decoded without special tokens."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return tok.batch_decode([ids], skip_special_tokens=True)[0]


def _answer(tok, row: dict, *, raw: bool = False) -> str:
    """The assistant call as the family's template writes it after the generation prompt; raw
    hands the template the stored row as is (a string argument: the double encoding)."""
    from llmops.backends.generation import build_prompt, render_answer

    if not raw:
        return render_answer(tok, row["messages"], row["tools"])
    prompt = build_prompt(tok, row["messages"], row["tools"])
    full = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert full.startswith(prompt)
    return full[len(prompt):]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def family(request, real_model):
    from llmops.backends.generation import load_tokenizer
    from llmops.backends.grpo import reward_functions
    from llmops.backends.templates import answer_parser

    tok = load_tokenizer(real_model(request.param))
    names = ["exact_match", "json_valid_rate", "call_exact"]
    fns = {f.__name__: f for f in reward_functions(names, answer_parser(tok))}
    return request.param, tok, fns


def _rewards(fns, row: dict, completions: list[str]) -> dict[str, list]:
    prompts = ["p"] * len(completions)
    rows = [json.dumps(row)] * len(completions)
    return {n: f(prompts=prompts, completions=completions, row=rows) for n, f in fns.items()}


def test_rewards_read_each_familys_own_call_syntax(family):
    name, tok, fns = family
    row = _row(ARGS)
    right = _generated(tok, _answer(tok, row))
    syntax = {"qwen2": "<tool_call>", "llama": '"parameters": {"title": "buy milk"'}[name]
    assert syntax in right, right  # the family's own syntax, not a generic one
    wrong = _generated(tok, _answer(tok, _row({"title": "buy bread", "priority": 2})))
    broken = right.replace('"priority": 2}', '"priority": 2')
    assert broken != right
    doubled = _generated(tok, _answer(tok, _row(json.dumps(ARGS)), raw=True))
    assert '"{\\"title\\"' in doubled, doubled  # the argument object as a JSON string

    got = _rewards(fns, row, [right, wrong, broken, doubled])
    assert got["exact_match"] == [1.0, 0.0, 0.0, 0.0], got
    assert got["call_exact"] == [1.0, 0.0, 0.0, 0.0], got
    assert got["json_valid_rate"][:3] == [1.0, 1.0, 0.0], got
    assert got["json_valid_rate"][3] == 0.0, got  # a double encoding is no valid call
    assert got["parses"] == [1.0, 1.0, 0.0, 0.0], got
