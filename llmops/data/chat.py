"""The one form a row takes into a chat template, and the one call that renders it.

Stored rows (train.jsonl, test.jsonl, pref_*.jsonl, requests to the endpoint) keep OpenAI's form:
a call's ``function.arguments`` is JSON *text* and ``tools`` may be JSON text. Chat templates
(transformers', TRL's ``qwen2_5.jinja`` / ``llama3_1.jinja`` / ``qwen3.jinja``, the tiny model's)
are written for *objects*: they apply ``tojson`` to the arguments, so a string would come out
double-encoded (``"arguments": "{\\"title\\": \\"milk\\"}"``) and the model would learn to write its
calls that way. So every stage that hands a row to a template (the data stage's lengths and
preview, sft's tokens and loss mask, eval's prompts and held-out loss, DPO, the GGUF parity probes,
the Modelfile check, the endpoint) goes through ``render``, which renders ``template_messages``
and ``template_tools``: the data stage measures exactly what sft trains on. What a template
receives is versioned by ``llmops.core.plan.MESSAGE_FORM``, part of those stages' fingerprints.

Pure Python: ``render`` calls the tokenizer it is given and imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def template_arguments(value: Any) -> Any:
    """Returns call arguments as a template expects them: JSON text parsed (an object), None as
    ``{}``. Text that is not JSON stays text (the data stage rejects such rows before training:
    ``arguments_not_json``)."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def template_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """Returns one call (OpenAI's ``{"id", "type", "function"}`` or a flat ``{"name",
    "arguments"}``) as ``{"type": "function", "function": {"name", "arguments": object}}``,
    with its id when it has one."""
    fn = call.get("function") or call
    out: dict[str, Any] = {"type": "function", "function": {
        "name": fn.get("name"), "arguments": template_arguments(fn.get("arguments"))}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """Returns one message as a template expects it: keys that are None dropped (templates test
    for ``tool_calls`` being defined), ``content`` always present ("" for a non-assistant turn
    without one), call arguments as objects, an assistant's ``reasoning_content`` also as
    ``thinking`` (the key gpt-oss's template reads; Qwen3's and DeepSeek's read the first)."""
    out = {k: v for k, v in message.items() if v is not None and k != "tool_calls"}
    content = message.get("content")
    out["content"] = content if content is not None or message.get("role") == "assistant" else ""
    if message.get("tool_calls"):
        out["tool_calls"] = [template_call(c) for c in message["tool_calls"]]
    if out.get("reasoning_content") is not None and "thinking" not in out:
        out["thinking"] = out["reasoning_content"]  # gpt-oss's template's key for it
    return out


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Returns a row's messages as a template expects them (``template_message`` each)."""
    return [template_message(m) for m in messages]


def template_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Returns a row's tools as a list of function schemas (they may be stored as JSON text);
    None when the row declares none."""
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    return list(tools) if tools else None


def row_messages(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Returns the messages a row is rendered as: ``messages``, or a preference pair's prompt
    followed by its chosen answer."""
    if row.get("messages") is not None:
        return list(row["messages"])
    return [*(row.get("prompt") or []), *(row.get("chosen") or [])]


def render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None, *,
           tokenize: bool = False, add_generation_prompt: bool = False, **kwargs: Any) -> Any:
    """Renders a chat through the tokenizer's chat template in the template form (see the module
    docstring): the one way llmops hands rows to a template.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: Stored (OpenAI) or template-form messages.
        tools: The row's tools: a list, its JSON text, or None.
        tokenize: Whether to return token ids (then ``return_dict`` etc. pass through ``kwargs``).
        add_generation_prompt: Whether to end on the assistant header.
        **kwargs: Passed to ``apply_chat_template`` (``return_dict``,
            ``return_assistant_tokens_mask``, ``chat_template``, ...).

    Returns:
        What ``apply_chat_template`` returns: the text, or the ids / encoding.
    """
    return tokenizer.apply_chat_template(
        template_messages(messages), tools=template_tools(tools), tokenize=tokenize,
        add_generation_prompt=add_generation_prompt, **kwargs)


def training_text(tokenizer: Any, text: str) -> str:
    """Returns what a text row (continued pre-training) is trained on: its text ending on the
    eos token, tokenized with the tokenizer's special tokens (``add_special_tokens=True``)."""
    return text + (tokenizer.eos_token or "")
