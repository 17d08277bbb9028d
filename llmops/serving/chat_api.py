"""Answers held-out rows through an OpenAI-compatible chat completions endpoint (the official
``openai`` client), and writes each answer as text in a call syntax eval's parsers read.

train.backend=openai evaluates the base model id and the fine-tuned id this way: each row's
prompt (``llmops.serving.integration.chat_request``: its messages but the reference answer)
goes out with the row's ``tools``; the answer's
``content`` and structured ``tool_calls`` are written as Hermes ``<tool_call>`` blocks
(``answer_text``), so the same scorers and gates read them as they read a local model's answers.
The key comes from OPENAI_API_KEY (the client reads it), never from a config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

#: The syntax answers are written in (``llmops.scoring.parsers.PARSERS``).
API_SYNTAX = "hermes"


def answer_text(message: Mapping[str, Any], syntax: str | None) -> str:
    """Returns an OpenAI chat message's answer as text in the model's call syntax.

    Args:
        message: ``choices[0].message`` as a dict (content, tool_calls).
        syntax: The model's call syntax ("task_api", "hermes"); None writes Hermes blocks.
    """
    lines = [str(message["content"])] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        raw = args if isinstance(args, str) else json.dumps(args if args is not None else {})
        name = json.dumps(fn.get("name"))
        if syntax == "task_api":
            lines.append(f'{{"tool": {name}, "arguments": {raw}}}')
        else:
            lines.append(f'<tool_call>\n{{"name": {name}, "arguments": {raw}}}\n</tool_call>')
    return "\n".join(lines)


def client(base_url: str | None, timeout_s: float) -> Any:
    """Returns an ``openai.OpenAI`` client for base_url (None: the client's default), its key
    from OPENAI_API_KEY."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, timeout=timeout_s, max_retries=2)


def answer_rows(api: Any, model: str, rows: Sequence[Mapping[str, Any]], max_tokens: int,
                show_progress: bool = False, desc: str = "answers") -> tuple[list[str], list[str]]:
    """Asks model for each row's answer (greedy, the row's tools offered).

    Args:
        api: An ``openai.OpenAI`` client (``client``).
        model: The model id (the base or the fine-tuned one).
        rows: Rows in llmops's chat form; the last message is the reference.
        max_tokens: Most tokens an answer may hold.
        show_progress: Draw a tqdm bar.
        desc: The bar's label.

    Returns:
        (answers as text in ``API_SYNTAX``, prompts as JSON text).
    """
    from tqdm.auto import tqdm

    from llmops.serving.integration import chat_request

    answers, prompts = [], []
    for row in tqdm(rows, desc=desc, disable=not show_progress):
        messages, tools = chat_request(row)
        extra = {"tools": tools} if tools else {}
        reply = api.chat.completions.create(model=model, messages=messages, temperature=0,
                                            max_tokens=max_tokens, **extra)
        answers.append(answer_text(reply.choices[0].message.model_dump(), API_SYNTAX))
        prompts.append(json.dumps(messages, ensure_ascii=False))
    return answers, prompts
