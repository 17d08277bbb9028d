"""OpenAI `tool_calls` from llama-cpp-python's server, through the model's own chat template.

llama-cpp-python 0.3.36 returns structured tool calls only from its functionary and
chatml-function-calling handlers; with a model's own Jinja template a call comes back as text in
`content`. The handler registered here (chat_format ``llmops-tools``) renders the request with the
chat template stored in the GGUF, `tools` included, as training did, generates, and reads the
answer back with the parser eval uses for that template (`llmops.scoring.parsers.parser_for`):
calls become `message.tool_calls` (arguments as JSON text, as OpenAI sends them) with
`finish_reason: "tool_calls"`, the rest stays `content`. The request's messages reach the template
as training rendered them (`llmops.data.chat.template_messages`: call arguments as objects); a call
the model writes with its arguments as a JSON string (double-encoded) is no call: the parser
refuses it, and the answer comes back as `content`.

A reasoning block the model writes first (``<think>...</think>``, ``parsers.split_reasoning``)
comes back as `message.reasoning_content`, as OpenAI-compatible servers return it, and the answer
after it as `content` (its calls read from that answer); a request's assistant messages reach the
template with their `reasoning_content`.

tool_choice: "auto" (or absent) renders the tools and parses the answer; "none" renders no tools;
{"type": "function", "function": {"name": ...}} is llama-cpp-python's own path (a grammar forces
that function's arguments). "required" is not enforced (treated as "auto"). Streaming requests
get the answer as text. `calls_from_text` is pure; `handle` runs inside the server process.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from llmops.data.chat import template_messages
from llmops.scoring.parsers import parser_for, split_reasoning

HANDLER_NAME = "llmops-tools"
#: What integration_config.json states about tool_choice (see the module docstring).
TOOL_CHOICE = {"supported": ["auto", "none", "function"], "not_enforced": ["required"]}
#: End-of-turn markers that end an answer when the template writes them (besides the eos).
_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>")


def calls_from_text(text: str, chat_template: str | None) -> tuple[str | None, list[dict]]:
    """Reads an answer in the template's call syntax; returns (content, OpenAI tool_calls).

    Each call is {"id", "type": "function", "function": {"name", "arguments": JSON text}};
    content is the text outside the calls (None when there is none and calls were found).
    """
    parsed = parser_for(chat_template)(text)
    calls = []
    for call in parsed.calls:  # arguments are objects: the parser refuses double-encoded ones
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": json.dumps(call["arguments"],
                                                           ensure_ascii=False)}})
    if not calls:
        return text, []
    return (parsed.text or None), calls


class _Formatter:
    """The GGUF's own chat template as a llama-cpp-python chat formatter, turn ends as stops."""

    def __init__(self, llama: Any):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.template = (llama.metadata or {}).get("tokenizer.chat_template")
        if not self.template:
            raise ValueError("the GGUF carries no tokenizer.chat_template; the llmops-tools chat "
                             "format renders with the model's own template")

        def text(token: int) -> str:
            if token < 0:
                return ""
            return llama.detokenize([token], special=True).decode("utf-8", errors="replace")

        eos, bos = text(llama.token_eos()), text(llama.token_bos())
        self.jinja = Jinja2ChatFormatter(self.template, eos_token=eos, bos_token=bos)
        self.stops = list(dict.fromkeys([s for s in (eos, *_TURN_ENDS)
                                         if s and s in self.template]))

    def __call__(self, **kwargs: Any) -> Any:
        result = self.jinja(**kwargs)
        result.stop = self.stops
        return result


_FORMATTERS: dict[int, _Formatter] = {}


def handle(*, llama: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None,
           tool_choice: Any = None, stream: bool = False, **kwargs: Any) -> Any:
    """Answers one chat completion request (llama-cpp-python's handler protocol)."""
    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler

    formatter = _FORMATTERS.get(id(llama))
    if formatter is None:
        formatter = _FORMATTERS[id(llama)] = _Formatter(llama)
    base = chat_formatter_to_chat_completion_handler(formatter)
    msgs = template_messages(list(messages))
    if tool_choice == "none":
        tools, tool_choice = None, None
    if stream or isinstance(tool_choice, dict):
        return base(llama=llama, messages=msgs, tools=tools, tool_choice=tool_choice,
                    stream=stream, **kwargs)
    reply = base(llama=llama, messages=msgs, tools=tools, tool_choice=None, stream=False,
                 **kwargs)
    choice = reply["choices"][0]
    reasoning, text = split_reasoning(choice["message"].get("content") or "")
    if reasoning is not None:  # the answer after it is the content (OpenAI-compatible servers')
        choice["message"]["reasoning_content"] = reasoning
        choice["message"]["content"] = text
    if not tools:
        return reply
    content, calls = calls_from_text(text, formatter.template)
    if calls:
        choice["message"]["content"] = content
        choice["message"]["tool_calls"] = calls
        choice["finish_reason"] = "tool_calls"
    return reply


def register() -> None:
    """Registers `handle` as llama-cpp-python chat format ``llmops-tools`` (this process)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(
        HANDLER_NAME, handle, overwrite=True)
