"""The deploy stage of train.backend=openai: the fine-tuned model stays at OpenAI, so deploying
it is saying where it answers (integration_config.json naming the fine-tuned model id) and
checking that it does (smoke_test.json: the first test rows through chat completions, timed,
the latencies monitor's baseline reads). Nothing is exported or served here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmops.core.context import StageContext
from llmops.errors import StageError

#: Where the openai client sends requests when train.openai.base_url is null.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def deploy_api(params: dict[str, Any], inputs: dict[str, Path], out_dir: Path,
               ctx: StageContext, gates: dict[str, Any],
               chats: list[tuple[list[dict[str, Any]], list[dict] | None]]) -> dict[str, Any]:
    """Smoke-tests the fine-tuned model id on chats ((messages, tools) each) and writes
    integration_config.json, smoke_test.json; returns the deploy report (without writing it)."""
    from llmops.files import write_json
    from llmops.serving.chat_api import client
    from llmops.serving.integration import data_tools, integration_config
    from llmops.stages.eval import api_model_id

    model = api_model_id(Path(inputs["sft"]))
    base_url = params["api"]["base_url"] or DEFAULT_BASE_URL
    api = client(params["api"]["base_url"], timeout_s=float(params["http_total_seconds"]))
    o = params["openai"]
    results = []
    for messages, tools in chats:
        t1 = time.perf_counter()
        reply = api.chat.completions.create(model=model, messages=messages, temperature=0.0,
                                            max_tokens=int(o["max_tokens"]),
                                            **({"tools": tools} if tools else {}))
        choice = reply.choices[0]
        calls = [{"name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls or []]
        results.append({"messages": messages,
                        "tools": [t["function"]["name"] for t in tools] if tools else [],
                        "answer": choice.message.content, "tool_calls": calls,
                        "finish_reason": choice.finish_reason,
                        "seconds": round(time.perf_counter() - t1, 3)})
    ok = bool(results) and all(r["answer"] is not None or r["tool_calls"] for r in results)
    write_json(out_dir / "smoke_test.json", {
        "base_url": base_url, "model": model, "client": "openai", "prompts": len(results),
        "passed": ok, "results": results})
    if not ok:
        raise StageError(f"deploy: smoke test of {model} at {base_url} failed; see "
                         "smoke_test.json.")
    tool_calls = {"structured": True, "via": "the API's tool_calls", "syntax": None,
                  "tool_choice": {"supported": ["auto", "none", "required", "function"]}}
    integration = integration_config("openai_api", base_url, model, "",
                                     data_tools(inputs.get("data")), tool_calls)
    integration["api_key"] = "from the OPENAI_API_KEY environment variable"
    integration["snippets"] = {k: v.replace('api_key="not-needed"', "").replace(
        ", )", ")") for k, v in integration["snippets"].items() if k != "ollama_client"}
    write_json(out_dir / "integration_config.json", integration)
    ctx.logger.info("deploy: %s answers at %s (%d smoke prompts)", model, base_url,
                    len(results))
    return {"target": "openai_api", "model": model, "base_model": params["api"]["model"],
            "base_url": base_url, "gates": gates, "smoke_passed": ok,
            "smoke_prompts": len(results), "integration_config": "integration_config.json"}
