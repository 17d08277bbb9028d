"""A local stand-in of OpenAI's files, fine-tuning and chat completions endpoints on 127.0.0.1.

OpenAI's API cannot be reached from the test machines; this is a real HTTP server (aiohttp, in a
thread of the test process) speaking the same routes and JSON shapes the official ``openai``
client uses, so llmops's client path runs unchanged, pointed here by base URL:

- POST /v1/files (multipart, purpose=fine-tune), GET /v1/files/{id}
- POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs (metadata filter), GET .../{id},
  GET .../{id}/events, POST .../{id}/cancel
- POST /v1/chat/completions (tools in, ``tool_calls`` out)

A job REALLY trains: the uploaded JSONL is written as a data folder and llmops's own hf backend
trains a LoRA adapter of the tiny base model on it (a few steps), then the fine-tuned id serves
that adapter, and the base id the base model. With ``hold=True`` a job stays ``running`` until the
test calls ``release()`` (to interrupt a run mid-job). Requests need a Bearer key, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web


class OpenAIStandIn:
    """The stand-in server; ``base_url`` is what ``train.openai.base_url`` takes."""

    def __init__(self, root: Path, base_model: Path, sft_params: dict[str, Any],
                 hold: bool = False, fail_with: str | None = None) -> None:
        self.root, self.base_model, self.sft_params = Path(root), Path(base_model), sft_params
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.models: dict[str, Any] = {}  # fine-tuned id -> adapter folder
        self.retrieved: dict[str, int] = {}  # job id -> GET .../{id} requests (a client follows)
        self.fail_with = fail_with
        self._go = threading.Event()
        if not hold:
            self._go.set()
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._started.wait(30)

    # --- server plumbing -------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=256 << 20, middlewares=[self._auth])
        app.add_routes([
            web.post("/v1/files", self._upload), web.get("/v1/files/{id}", self._file),
            web.post("/v1/fine_tuning/jobs", self._create),
            web.get("/v1/fine_tuning/jobs", self._list),
            web.get("/v1/fine_tuning/jobs/{id}", self._retrieve),
            web.get("/v1/fine_tuning/jobs/{id}/events", self._events),
            web.post("/v1/fine_tuning/jobs/{id}/cancel", self._cancel),
            web.post("/v1/chat/completions", self._chat),
        ])
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def release(self) -> None:
        """Lets held jobs train."""
        self._go.set()

    def close(self) -> None:
        self._go.set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _error(401, "You didn't provide an API key.")
        return await handler(request)

    # --- files -----------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune" or not isinstance(upload, web.FileField):
            return _error(400, "file and purpose=fine-tune are required")
        fid = f"file-{uuid.uuid4().hex[:24]}"
        path = self.root / fid
        path.write_bytes(upload.file.read())
        obj = {"id": fid, "object": "file", "bytes": path.stat().st_size,
               "created_at": int(time.time()), "filename": upload.filename,
               "purpose": "fine-tune", "status": "processed"}
        self.files[fid] = {**obj, "path": str(path)}
        return web.json_response(obj)

    async def _file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        return web.json_response({k: v for k, v in f.items() if k != "path"}) if f \
            else _error(404, "No such File object")

    # --- fine-tuning jobs ------------------------------------------------------------------
    def _job_obj(self, job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _event(self, jid: str, message: str, data: dict | None = None) -> None:
        self.events[jid].append({"id": f"ftevent-{uuid.uuid4().hex[:20]}",
                                 "object": "fine_tuning.job.event", "created_at": int(time.time()),
                                 "level": "info", "message": message, "data": data or {},
                                 "type": "metrics" if data else "message"})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("training_file") not in self.files:
            return _error(400, f"invalid training_file: {body.get('training_file')}")
        jid = f"ftjob-{uuid.uuid4().hex[:20]}"
        hyper = body.get("hyperparameters") or {}
        job = {"id": jid, "object": "fine_tuning.job", "created_at": int(time.time()),
               "model": body["model"], "training_file": body["training_file"],
               "validation_file": body.get("validation_file"), "status": "validating_files",
               "fine_tuned_model": None, "finished_at": None, "error": None,
               "hyperparameters": {k: hyper.get(k, "auto") for k in
                                   ("n_epochs", "batch_size", "learning_rate_multiplier")},
               "organization_id": "org-standin", "result_files": [], "seed": body.get("seed", 0),
               "trained_tokens": None, "metadata": body.get("metadata"),
               "suffix": body.get("suffix")}
        self.jobs[jid], self.events[jid] = job, []
        self._event(jid, "Validating training file")
        threading.Thread(target=self._train, args=(jid,), daemon=True).start()
        return web.json_response(self._job_obj(job))

    async def _list(self, request: web.Request) -> web.Response:
        want = {k[len("metadata["):-1]: v for k, v in request.query.items()
                if k.startswith("metadata[")}
        jobs = [self._job_obj(j) for j in reversed(self.jobs.values())
                if all((j.get("metadata") or {}).get(k) == v for k, v in want.items())]
        return web.json_response({"object": "list", "data": jobs, "has_more": False})

    async def _retrieve(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job:
            self.retrieved[job["id"]] = self.retrieved.get(job["id"], 0) + 1
        return web.json_response(self._job_obj(job)) if job else _error(404, "No such job")

    async def _events(self, request: web.Request) -> web.Response:
        events = self.events.get(request.match_info["id"])
        if events is None:
            return _error(404, "No such job")
        return web.json_response({"object": "list", "data": list(reversed(events)),
                                  "has_more": False})

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if not job:
            return _error(404, "No such job")
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            job["status"] = "cancelled"
            self._event(job["id"], "Job cancelled")
        return web.json_response(self._job_obj(job))

    def _train(self, jid: str) -> None:
        """Trains the tiny base on the uploaded rows with llmops's hf backend, then serves it."""
        from llmops.backends import get_backend
        from llmops.core.context import StageContext

        job = self.jobs[jid]
        job["status"] = "running"
        self._event(jid, "Fine-tuning job started")
        self._go.wait()
        if job["status"] == "cancelled":
            return
        if self.fail_with:
            job.update(status="failed", error={"code": "invalid_training_file",
                                               "message": self.fail_with, "param": None})
            self._event(jid, f"Job failed: {self.fail_with}")
            return
        data = self.root / jid / "data"
        data.mkdir(parents=True)
        rows = Path(self.files[job["training_file"]]["path"]).read_text(encoding="utf-8")
        (data / "train.jsonl").write_text(rows, encoding="utf-8")
        if job["validation_file"]:
            val = Path(self.files[job["validation_file"]]["path"]).read_text(encoding="utf-8")
            (data / "val.jsonl").write_text(val, encoding="utf-8")
        out = self.root / jid / "out"
        out.mkdir()
        ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("standin"))
        with self._lock:  # one training at a time in this process
            report = get_backend("hf").train_sft(self.sft_params, data, str(self.base_model),
                                                 out, ctx)
        steps = report.get("loss_curve") or []
        for i, point in enumerate(steps):
            loss = point.get("loss") if isinstance(point, dict) else point
            self._event(jid, f"Step {i + 1}/{len(steps)}: training loss={loss}",
                        {"step": i + 1, "total_steps": len(steps), "train_loss": loss})
        model = f"ft:{job['model']}:standin:{job['suffix'] or 'llmops'}:{jid[-8:]}"
        self.models[model] = out / "adapter"
        tokens = sum(len(line) // 4 for line in rows.splitlines())
        job.update(status="succeeded", fine_tuned_model=model, finished_at=int(time.time()),
                   trained_tokens=tokens)
        self._event(jid, "The job has successfully completed")

    # --- chat completions ------------------------------------------------------------------
    def _model(self, name: str) -> Any:
        from llmops.backends.generation import load_model

        with self._lock:
            if name not in self._loaded:
                adapter = self.models.get(name)
                self._loaded[name] = load_model(self.base_model, adapter=adapter,
                                                chat_template="chatml")
            return self._loaded[name]

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["model"]
        if name not in self.models and name.startswith("ft:"):
            return _error(404, f"The model `{name}` does not exist")
        answer = await asyncio.get_running_loop().run_in_executor(None, self._answer, body)
        content, calls = answer
        message = {"role": "assistant", "content": content,
                   **({"tool_calls": calls} if calls else {})}
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    def _answer(self, body: dict[str, Any]) -> tuple[str | None, list[dict]]:
        from llmops.backends.generation import generate
        from llmops.serving.tool_calls import calls_from_text

        model, tokenizer = self._model(body["model"])
        row = {"messages": [*body["messages"], {"role": "assistant", "content": ""}],
               "tools": body.get("tools")}
        with self._lock:
            answers, _ = generate(model, tokenizer, [row],
                                  max_new_tokens=int(body.get("max_tokens") or 64), batch_size=1,
                                  show_progress=False)
        return calls_from_text(answers[0], tokenizer.chat_template)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": None}}, status=status)
