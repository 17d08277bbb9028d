"""The names a config gives about data: the formats the readers take, the kind of rows each
holds, the source columns of the canonical fields and ShareGPT's turn keys and role tags.

A leaf: the config schema and the compiler read these without importing the readers
(``llmops.data.convert``), which take their defaults from here.
"""

from __future__ import annotations

#: The formats the readers take (``data.format`` also accepts ``auto`` and the aliases in
#: ``llmops.data.formats``).
FORMATS: tuple[str, ...] = (
    "openai", "sharegpt", "hermes", "xlam", "alpaca", "completion", "text", "preference",
    "sharegpt_preference",
)
#: The kind of rows each format holds: chat, text or preference pairs.
KIND: dict[str, str] = {
    "openai": "chat", "sharegpt": "chat", "hermes": "chat", "xlam": "chat", "alpaca": "chat",
    "completion": "chat",
    "text": "text", "preference": "preference", "sharegpt_preference": "preference",
}
#: Source column of each canonical field; ShareGPT reads ``messages`` from "conversations" first.
DEFAULT_COLUMNS: dict[str, str] = {
    "messages": "messages", "system": "system", "tools": "tools", "instruction": "instruction",
    "input": "input", "output": "output", "history": "history", "prompt": "prompt",
    "completion": "completion", "text": "text", "chosen": "chosen", "rejected": "rejected",
    "label": "label", "query": "query", "answers": "answers", "images": "images",
    "videos": "videos", "audios": "audios",
}
#: ShareGPT role tag → canonical role (function_call turns become assistant calls).
TAG_ROLES: dict[str, str] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}
#: ShareGPT's turn keys and role names.
DEFAULT_TAGS: dict[str, str] = {
    "role": "from", "content": "value", **{tag: tag for tag in TAG_ROLES},
}
DEFAULT_TAGS.update(user="human", assistant="gpt")
