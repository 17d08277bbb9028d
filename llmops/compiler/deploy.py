"""Compiles the gguf and deploy stages. Pure: no torch.

compile_plan calls add_serving only after export; a plan whose deploy.gguf.quantization is empty and
whose target is local gets no new stage, so its fingerprints stay as they were.
"""

from __future__ import annotations

from typing import Any

from llmops.config.schema import AppConfig


def add_serving(b: Any, cfg: AppConfig, model: dict[str, Any], base: list[str]) -> None:
    """Adds the gguf stage (deploy.gguf.quantization) and the deploy stage (ollama, openai)."""
    dp = cfg.deploy
    if not dp.gguf.quantization or not b.has("export"):
        return
    g = dp.gguf
    data = ["data"] if b.has("data") else []
    b.add("gguf", {"model": model, "quantization": list(g.quantization),
                   "parity_prompts": g.parity_prompts, "max_new_tokens": g.max_new_tokens},
          ["export", *data, *base],
          f"llama.cpp convert -> {', '.join(g.quantization)}; tokenizer, template and greedy "
          f"parity on {g.parity_prompts} held-out prompts")
    if dp.target not in ("ollama", "openai"):
        return
    has_eval = b.has("eval")
    params = {
        "target": dp.target, "model": {**model, "context_length": cfg.model.context_length},
        "serve_quantization": g.quantization[0], "allow_failed_gates": dp.allow_failed_gates,
        "eval_enabled": has_eval, "eval_enforce": cfg.eval.enforce,
        "max_new_tokens": cfg.eval.max_new_tokens,
    }
    if dp.target == "ollama":
        params["ollama"] = dp.ollama.model_dump()
        what = f"Modelfile from the {cfg.model.chat_template} template; ollama create at " \
               f"{dp.ollama.host} when reachable"
    else:
        params["openai"] = dp.openai.model_dump()
        params["keep_serving"] = dp.keep_serving
        what = (f"serve {g.quantization[0]} GGUF on {dp.openai.host} (llama-cpp-python), smoke "
                f"test via the openai client{', keep serving' if dp.keep_serving else ''}")
    b.add("deploy", params, ["gguf", "export", *(["eval"] if has_eval else []), *data], what)
