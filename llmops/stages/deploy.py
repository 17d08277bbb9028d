"""Stage "deploy": the evaluated GGUF to Ollama or to a local OpenAI-compatible endpoint.

- ollama: a Modelfile whose TEMPLATE and stops come from the training chat template (checked by
  rendering sample conversations both ways, llmops.serving.modelfile), `ollama create` through the
  Ollama API when deploy.ollama.host answers, else the Modelfile and the one-line command to run.
- openai: llama-cpp-python's server on 127.0.0.1 (a free port), health wait on /v1/models, smoke
  prompts through the official openai client -> smoke_test.json, server stopped unless
  keep_serving.
Both write integration_config.json (llmops.serving.integration: base_url, model name, the data's
tools, how calls are read back and which tool_choice values work, OpenAI SDK / Agents SDK / Ollama
snippets). The endpoint runs chat format llmops-tools (llmops.serving.tool_calls): the GGUF's own
template renders `tools`, and the calls the model writes come back as structured `tool_calls`;
smoke chats from data rows carry their tools.
Deploy refuses a model whose eval did not pass its gates unless deploy.allow_failed_gates=true.
Always runs (the stage table's `always_run`): its effects live outside its folder.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llmops.compiler.builders.deploy import DeployParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError
from llmops.serving.tool_calls import HANDLER_NAME, TOOL_CHOICE

REPORT_NAME = report_name("deploy")
DEFAULT_SMOKE = ("Add a task to buy milk due 2025-03-14.", "List my open tasks.",
                 "Tell me the weather in Paris.")


def check_gates(params: dict, inputs: dict[str, Path]) -> dict[str, Any]:
    """Returns the eval verdict; raises when it failed (or is missing) without the override.

    Raises:
        StageError: Eval did not pass (also with eval.enforce=false) or did not run, and
            deploy.allow_failed_gates is false.
    """
    allow = bool(params["allow_failed_gates"])
    passed, failed = None, []
    has_eval = inputs.get("eval") is not None
    eval_report = Path(inputs["eval"]) / report_name("eval") if has_eval else None
    if eval_report is not None and eval_report.is_file():
        report = json.loads(eval_report.read_text("utf-8"))
        passed = report.get("passed")
        failed = [g.get("name") for g in report.get("gates", []) if not g.get("passed", True)]
    verdict = {"eval_passed": passed, "failed_gates": failed, "allow_failed_gates": allow}
    if passed is True or allow:
        return verdict
    why = (f"eval did not pass its gates ({', '.join(map(str, failed)) or 'see eval_report.json'})"
           if passed is False else "eval did not run, so nothing shows the model passed its gates")
    raise StageError(f"deploy: refusing to deploy: {why}. Improve the model, or deploy anyway "
                     "with deploy.allow_failed_gates=true.")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float, total_s: float) -> dict | None:
    """GETs a JSON URL (each read within timeout, all of it within total_s); None when nothing
    answers in time or the answer is not a JSON object."""
    from llmops.serving.deadline import within

    def fetch() -> Any:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local URLs
            return json.loads(r.read().decode() or "{}")

    try:
        got = within(total_s, fetch)
    except (OSError, urllib.error.URLError, ValueError):  # DeadlineExceeded is an OSError
        return None
    return got if isinstance(got, dict) else None


def _smoke_chats(params: dict, inputs: dict[str, Path],
                 n: int) -> list[tuple[list[dict[str, Any]], list[dict] | None]]:
    """Returns the smoke chats as (messages, tools): deploy.openai.smoke_prompts (with the data's
    tools, if any), else the first test rows with their own tools, else DEFAULT_SMOKE."""
    from llmops.serving.integration import chat_request, data_tools

    data = inputs.get("data")
    given = list(params["openai"]["smoke_prompts"] or [])
    if given:
        tools = data_tools(data) or None
        return [([{"role": "user", "content": p}], tools) for p in given]
    if data is not None and (Path(data) / "test.jsonl").is_file():
        from llmops.files import read_jsonl

        rows = read_jsonl(Path(data) / "test.jsonl")[:n]
        if rows:
            return [chat_request(r) for r in rows]
    return [([{"role": "user", "content": p}], None) for p in DEFAULT_SMOKE[:n]]


def _ollama(params: dict, gguf: Path, tokenizer: Any, out_dir: Path, ctx: StageContext,
            name: str) -> dict[str, Any]:
    from llmops.serving import modelfile as mf

    built = mf.checked_modelfile(tokenizer, params["model"]["chat_template"],
                                 str(gguf.resolve()), params["model"]["context_length"], "deploy")
    family, check, stops, text = built["family"], built["check"], built["stop"], built["text"]
    parameters = built["parameters"]
    if check["json_formatting"]:
        ctx.logger.warning("deploy: Ollama prints tool schemas and call arguments as Go's "
                           "compact JSON, keys sorted; the training template spaces or orders "
                           "them otherwise (same data, %d of %d sample "
                           "conversations)", len(check["json_formatting"]),
                           check["conversations"] + check["tool_conversations"]
                           + check["reasoning_conversations"])
    (out_dir / "Modelfile").write_text(text, encoding="utf-8")
    o = params["ollama"]
    host = str(o["host"]).rstrip("/")
    final = Path(ctx.run_dir) / "stages" / "deploy" / "Modelfile"
    record: dict[str, Any] = {
        "modelfile": "Modelfile", "template_check": check, "stop": stops,
        "parameters": parameters, "host": host,
        "command": f"ollama create {shlex.quote(name)} -f {shlex.quote(str(final))}",
    }
    total = float(params["http_total_seconds"])
    version = _get(f"{host}/api/version", float(o["timeout_s"]), total)
    if version is None:
        record.update(created=False, reason=f"no Ollama server answered at {host}")
        ctx.logger.warning("deploy: no Ollama server at %s; run: %s", host, record["command"])
        return record
    import ollama

    from llmops.serving.deadline import DeadlineExceeded, within

    client = ollama.Client(host=host)
    try:
        digest = client.create_blob(gguf)
        client.create(model=name, files={gguf.name: digest}, template=mf.go_template(family),
                      parameters={"stop": stops, **parameters}, stream=False)
        reply = within(total, client.chat, model=name,
                       messages=[{"role": "user", "content": DEFAULT_SMOKE[1]}],
                       options={"num_predict": 32})
    except (ollama.ResponseError, ConnectionError, DeadlineExceeded) as exc:
        raise StageError(
            f"deploy: the Ollama server at {host} failed to create {name!r}: {exc}. Fix the "
            "server (or set deploy.ollama.host to one that works) and rerun; the finished "
            "stages are reused and nothing of this stage was published.") from exc
    record.update(created=True, server_version=version.get("version"),
                  smoke_answer=reply["message"]["content"])
    return record


def _openai(params: dict, inputs: dict[str, Path], gguf: Path, out_dir: Path, ctx: StageContext,
            name: str) -> tuple[dict[str, Any], str]:
    o = params["openai"]
    host = str(o["host"])
    port = int(o["port"] or 0) or _free_port(host)
    base_url = f"http://{host}:{port}/v1"
    n_ctx = int(params["model"]["context_length"])
    cmd = [sys.executable, "-m", "llmops.serving.llama_cpp_runtime",
           "--model", str(gguf.resolve()), "--host", host, "--port", str(port),
           "--model_alias", name, "--n_ctx", str(n_ctx), "--chat_format", HANDLER_NAME,
           "--n_threads", str(min(4, os.cpu_count() or 1))]
    keep = bool(params["keep_serving"])
    log_path = (Path(ctx.run_dir) / "llama_server.log") if keep else out_dir / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    total = float(params["http_total_seconds"])
    t0 = time.perf_counter()
    log = open(log_path, "w")  # noqa: SIM115 - the server outlives this block when kept
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=keep)
    record: dict[str, Any] = {"base_url": base_url, "command": shlex.join(cmd), "pid": proc.pid}
    try:
        deadline = time.monotonic() + float(o["startup_timeout_s"])
        while _get(f"{base_url}/models", 1.0, total) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise StageError(f"deploy: llama-cpp-python's server did not answer {base_url}"
                                 f"/models (exit {proc.poll()}):\n{tail}\nCheck pip install "
                                 "'llmops[gguf]' (the [server] extra) and the port.")
            time.sleep(0.25)
        record["startup_seconds"] = round(time.perf_counter() - t0, 2)
        ctx.logger.info("deploy: serving %s at %s (up in %.1fs)", gguf.name, base_url,
                        record["startup_seconds"])
        from openai import OpenAI

        from llmops.serving.deadline import DeadlineExceeded, within

        # Each read within 120 s, each request within limits.http_total_seconds in all.
        client = OpenAI(base_url=base_url, api_key="not-needed", timeout=min(120.0, total),
                        max_retries=0)
        results = []
        try:
            served = [m.id for m in within(total, client.models.list).data]
            for messages, tools in _smoke_chats(params, inputs, int(o["n_smoke"])):
                t1 = time.perf_counter()
                reply = within(total, client.chat.completions.create,
                               model=name, messages=messages, max_tokens=int(o["max_tokens"]),
                               temperature=0.0, seed=0, **({"tools": tools} if tools else {}))
                choice = reply.choices[0]
                calls = [{"name": c.function.name, "arguments": c.function.arguments}
                         for c in choice.message.tool_calls or []]
                results.append({
                    "messages": messages, "tools": [t["function"]["name"] for t in tools]
                    if tools else [], "answer": choice.message.content, "tool_calls": calls,
                    "finish_reason": choice.finish_reason,
                    "completion_tokens": getattr(reply.usage, "completion_tokens", None),
                    "seconds": round(time.perf_counter() - t1, 3)})
        except DeadlineExceeded as exc:
            raise StageError(f"deploy: the smoke test at {base_url} got {exc}. A model this "
                             "slow would time out its clients too: serve a smaller "
                             "quantization, lower deploy.openai.max_tokens, or raise "
                             "limits.http_total_seconds.") from exc
        ok = bool(results) and name in served and all(
            r["answer"] is not None or r["tool_calls"] for r in results)
        smoke = {"base_url": base_url, "model": name, "served_models": served,
                 "client": "openai", "prompts": len(results), "passed": ok, "results": results}
        from llmops.files import write_json

        write_json(out_dir / "smoke_test.json", smoke)
        record.update(smoke_passed=ok, smoke_prompts=len(results))
        if not ok:
            raise StageError(f"deploy: smoke test failed at {base_url}; see smoke_test.json "
                             f"(served models {served}, expected {name!r}).")
    finally:
        if keep and proc.poll() is None and record.get("smoke_passed"):
            record.update(serving=True, log=str(log_path), stop_command=f"kill {proc.pid}")
            ctx.logger.info("deploy: keep_serving: server pid %d at %s (log %s)", proc.pid,
                            base_url, log_path)
        else:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            record["serving"] = False
            record["stopped_cleanly"] = proc.returncode is not None
        log.close()
    return record, base_url


def _tool_calls_record(target: str, chat_template: str | None) -> dict[str, Any]:
    """Says how the endpoint renders tools and reads calls back, and which tool_choice works."""
    from llmops.scoring.parsers import syntax_of

    syntax = syntax_of(chat_template)
    if target == "openai":
        return {"structured": syntax is not None, "chat_format": HANDLER_NAME,
                "syntax": syntax, "tool_choice": TOOL_CHOICE,
                "parser": "llmops.scoring.parsers.parser_for(the model's chat template)"}
    return {"structured": True, "via": "Ollama's TEMPLATE (.Tools, .ToolCalls)",
            "syntax": syntax, "tool_choice": {"supported": ["auto"]}}


def run(params: DeployParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Deploys the GGUF of the gguf stage to deploy.target (ollama or openai).

    Params read: target, model (name, chat_template, context_length), serve_quantization,
    allow_failed_gates, ollama {host, model_name, timeout_s}, openai {...}, keep_serving,
    http_total_seconds (each HTTP request in all).
    Inputs: "gguf", "export" (merged tokenizer), "eval" (gate verdict), "data" (smoke prompts).

    Returns:
        The deploy report (also written with integration_config.json, smoke_test.json).
    """
    from llmops.files import write_json
    from llmops.serving.integration import data_tools, integration_config
    from llmops.stages.common import export_tokenizer

    out_dir = Path(out_dir)
    gates = check_gates(params, inputs)
    if params["target"] == "openai_api":  # train.backend=openai: the model stays at OpenAI
        from llmops.stages.deploy_api import deploy_api

        report = deploy_api(params, inputs, out_dir, ctx, gates,
                            _smoke_chats(params, inputs, int(params["openai"]["n_smoke"])))
        write_json(out_dir / REPORT_NAME, report)
        return report
    gguf_dir = Path(inputs["gguf"])
    greport = json.loads((gguf_dir / report_name("gguf")).read_text("utf-8"))
    q = params["serve_quantization"]
    gguf = gguf_dir / greport["files"][q]["path"]
    tokenizer = export_tokenizer(Path(inputs["export"]) / "merged")
    target = params["target"]
    o = params.get("ollama") or {}
    name = o.get("model_name") if target == "ollama" and o.get("model_name") else \
        f"llmops-{params['model'].get('name') or 'model'}"
    ollama_host = str(o.get("host") or "http://127.0.0.1:11434").rstrip("/")
    report: dict[str, Any] = {"target": target, "model": name, "gguf": str(gguf.resolve()),
                              "quantization": q, "gates": gates,
                              "gguf_parity": greport["files"][q]["parity"]}
    if target == "ollama":
        report["ollama"] = _ollama(params, gguf, tokenizer, out_dir, ctx, name)
        base_url = f"{ollama_host}/v1"
    elif target == "openai":
        report["openai"], base_url = _openai(params, inputs, gguf, out_dir, ctx, name)
    else:
        raise StageError(f"deploy: target {target!r} is not one of ollama, openai.")
    integration = integration_config(
        target, base_url, name, ollama_host, data_tools(inputs.get("data")),
        _tool_calls_record(target, tokenizer.chat_template))
    if target == "openai":
        integration["serve_command"] = report["openai"]["command"]
        integration["serving"] = report["openai"].get("serving", False)
    write_json(out_dir / "integration_config.json", integration)
    report["integration_config"] = "integration_config.json"
    write_json(out_dir / REPORT_NAME, report)
    return report
