"""What deploy tells a client: integration_config.json, smoke chats, the data's tools. Pure.

An agent framework points at the deployed model through OpenAI's Chat Completions API: base_url,
the served model name, any api key, and the tools the model was trained to call (the function
schemas of the data, in OpenAI's form). llama-cpp-python's server has no Responses API, so the
OpenAI Agents SDK must use its Chat Completions model class (`OpenAIChatCompletionsModel`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

#: The split files whose rows' tools are collected, in order.
_SPLITS = ("test.jsonl", "val.jsonl", "train.jsonl")
_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def data_tools(data_dir: Path | None) -> list[dict[str, Any]]:
    """Returns the distinct tool schemas (by function name, first seen) of the data's splits."""
    seen: dict[str, dict[str, Any]] = {}
    if data_dir is None:
        return []
    for split in _SPLITS:
        path = Path(data_dir) / split
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if '"tools"' not in line:
                    continue
                tools = json.loads(line).get("tools")
                for t in (json.loads(tools) if isinstance(tools, str) else tools) or []:
                    seen.setdefault(t.get("function", t)["name"], t)
    return list(seen.values())


def chat_request(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict] | None]:
    """Returns a data row as a Chat Completions request: its messages but the reference answer
    (OpenAI keys only, call arguments as JSON text) and its tools (None when it has none)."""
    messages = [{k: m[k] for k in _MESSAGE_KEYS if m.get(k) is not None}
                for m in row["messages"][:-1]]
    for m in messages:
        m.setdefault("content", "")
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) and tools.strip() else tools
    return messages, (list(tools) if tools else None)


def _py(text: str) -> str:
    """Returns a Python string literal of text (a JSON string is one, with the same value)."""
    return json.dumps(text, ensure_ascii=False)


def snippets(base_url: str, name: str, ollama_host: str, has_tools: bool) -> dict[str, str]:
    """Returns copy-paste client snippets: OpenAI SDK (with the tools), Agents SDK, Ollama, env.

    Every value is quoted for its language (a Python string literal, a shell word), so a name
    with a quote or a newline stays text; llmops.config.names refuses such names anyway.
    """
    msg = '[{"role": "user", "content": "List my open tasks."}]'
    load = ("import json\n"
            'tools = json.load(open("integration_config.json"))["tools"]\n') if has_tools else ""
    tools_arg = ", tools=tools" if has_tools else ""
    url, model, host = _py(base_url), _py(name), _py(ollama_host)
    return {
        "openai_sdk": (f"{load}from openai import OpenAI\n"
                       f'client = OpenAI(base_url={url}, api_key="not-needed")\n'
                       f"reply = client.chat.completions.create(model={model}, messages={msg}"
                       f"{tools_arg})\n"
                       "print(reply.choices[0].message.content, "
                       "reply.choices[0].message.tool_calls)"),
        "openai_agents_sdk": (
            "from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled\n"
            "from openai import AsyncOpenAI\n"
            "set_tracing_disabled(True)  # no OpenAI key: keep traces local\n"
            f"model = OpenAIChatCompletionsModel(model={model}, openai_client=AsyncOpenAI("
            f'base_url={url}, api_key="not-needed"))\n'
            'agent = Agent(name="assistant", model=model, tools=[...])  # @function_tool '
            "functions named and typed as in integration_config.json tools\n"
            'print(Runner.run_sync(agent, "List my open tasks.").final_output)'),
        "ollama_client": ("from ollama import Client\n"
                          f"reply = Client(host={host}).chat(model={model}, "
                          f"messages={msg})\n"
                          'print(reply["message"]["content"])'),
        "env": f"OPENAI_BASE_URL={shlex.quote(base_url)} OPENAI_API_KEY=not-needed",
    }


def integration_config(target: str, base_url: str, name: str, ollama_host: str,
                       tools: list[dict[str, Any]], tool_calls: dict[str, Any]) -> dict[str, Any]:
    """Returns integration_config.json: where the model answers and how to call its tools.

    Args:
        target: deploy.target (openai or ollama).
        base_url: The OpenAI-compatible base URL (…/v1).
        name: The served model name.
        ollama_host: The Ollama host (its snippet).
        tools: The data's tool schemas (OpenAI form); [] when the data has none.
        tool_calls: How calls are rendered and parsed, and which tool_choice values work.
    """
    return {"base_url": base_url, "model": name, "api_key": "not-needed", "target": target,
            "api": "chat.completions", "tools": tools, "tool_calls": tool_calls,
            "snippets": snippets(base_url, name, ollama_host, bool(tools))}
