"""Loads GGUF files with llama-cpp-python without ggml's CPU "extra buffer types".

llama.cpp (llama-cpp-python 0.3.36) repacks weights into extra CPU buffer types (AMX tiles on Intel
CPUs that have AMX, AVX-512/AVX2 repacked layouts elsewhere). On an AMX machine (checked on a Xeon
with AMX_INT8) that path segfaults in `decode` for q8_0 weights of small widths as soon as a prompt
is processed in one batch; the same file decodes correctly with `use_extra_bufts=False`, and f16
files never take that path. llama-cpp-python's `Llama()` does not expose the flag, so loads through
this module patch the default model params that `Llama()` starts from. Parity checks and the served
endpoint then compute with ggml's plain CPU kernels: slower prompt processing on some CPUs, the same
numbers.

    python -m llmops.serving.llama_cpp_runtime --model M.gguf --host 127.0.0.1 --port 8000
starts llama-cpp-python's OpenAI-compatible server (same arguments) with the same setting, and
with chat format ``llmops-tools`` registered (`--chat_format llmops-tools`: the GGUF's own chat
template, tools included, structured tool_calls and the answer's reasoning as
``reasoning_content``; see llmops.serving.tool_calls).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _patch() -> Any:
    """Makes `Llama()` start from model params with extra buffer types off; returns the original."""
    import llama_cpp.llama as llama_module

    original = llama_module.llama_cpp.llama_model_default_params
    if getattr(original, "_llmops_plain", False):
        return original

    def plain_params() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    plain_params._llmops_plain = True  # type: ignore[attr-defined]
    llama_module.llama_cpp.llama_model_default_params = plain_params
    return original


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """Within the block, `llama_cpp.Llama()` loads weights without extra buffer types."""
    import llama_cpp.llama as llama_module

    original = _patch()
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = original


def load_gguf(path: Path, n_ctx: int = 0, vocab_only: bool = False, n_threads: int = 2) -> Any:
    """Loads a GGUF on the CPU, quietly, with plain CPU buffers."""
    from llama_cpp import Llama

    with plain_cpu_buffers():
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=0,
                     seed=0, vocab_only=vocab_only, verbose=False)


def reasoning_field() -> None:
    """Declares ``reasoning_content`` on llama-cpp-python's response message type (a TypedDict
    its server validates replies against, dropping keys it does not declare), so the reasoning
    the llmops-tools format separates from the answer reaches the client, as OpenAI-compatible
    servers send it. Call before the server's routes are built."""
    from llama_cpp import llama_types
    from typing_extensions import NotRequired

    message = llama_types.ChatCompletionResponseMessage
    message.__annotations__["reasoning_content"] = NotRequired[str]
    message.__optional_keys__ = frozenset({*message.__optional_keys__, "reasoning_content"})


def serve() -> None:
    """Runs llama-cpp-python's server (its own command line) with plain CPU buffers, the
    llmops-tools chat format registered and replies' ``reasoning_content`` kept."""
    _patch()
    reasoning_field()
    from llama_cpp.server.__main__ import main

    from llmops.serving.tool_calls import register

    register()
    main()


if __name__ == "__main__":
    serve()
