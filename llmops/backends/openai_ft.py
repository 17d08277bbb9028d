"""train.backend=openai: supervised fine-tuning through OpenAI's fine-tuning API.

The sft stage's work folder (stable per fingerprint, kept when the stage fails or is killed:
stages/CONTRACT.md) holds ``openai_job.json``. In order:

1. Every row of train.jsonl and val.jsonl is checked against the API's documented rules
   (``llmops.data.openai_ft``) before anything is sent; with data.on_error=fail a broken row stops
   the stage (exit 5) naming its file, line, row and rule, with keep it is left out and listed.
2. Tokens are counted (the model's tiktoken encoding, or the estimate: the report says which) and
   the cost checked against train.openai.max_cost_usd; over the cap nothing is uploaded.
3. The files are uploaded, then the job is created with a token of this attempt in its
   ``metadata``: the token is written first, the job id as soon as the API returns it, so a
   crash in between is found again by the token (``jobs.list(metadata=...)``), and Ctrl-C or a
   crash never starts a second paid job: a rerun follows the job the folder names.
4. The job is followed (status and events, as log lines and a tqdm bar over its steps) until it
   succeeds (the report: job id, fine-tuned model id, trained tokens, cost), fails or is
   cancelled (the stage fails with the API's message).

The key comes from OPENAI_API_KEY only (the openai client reads it); it never reaches a file.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from llmops.errors import DataRejected, StageError

JOB_FILE = "openai_job.json"
#: The problems a refusal lists (all of them are in the training report with on_error=keep).
SHOWN = 10
_DONE = ("succeeded", "failed", "cancelled")


class OpenAIBackend:
    """Fine-tuning through OpenAI's API (``llmops.backends.TrainingBackend``)."""

    name = "openai"

    def train_sft(self, params: dict[str, Any], data_dir: Path, base_model: str, out_dir: Path,
                  ctx: Any) -> dict[str, Any]:
        """Checks, uploads, creates or resumes the job and follows it; returns the report."""
        from llmops.core.plan import report_name
        from llmops.files import write_json

        o = params["openai"]
        if not os.environ.get("OPENAI_API_KEY"):
            raise StageError("sft: train.backend=openai needs OPENAI_API_KEY in the environment "
                             "(it is read from there only). Export it and rerun.")
        if not o["upload_consent"]:
            raise StageError("sft: train.openai.upload_consent is false: nothing is uploaded. "
                             "Set train.openai.upload_consent=true to agree.")
        out_dir = Path(out_dir)
        state = _read_state(out_dir)
        api = _client(o)
        if state.get("job_id") is None and state.get("token"):
            state["job_id"] = _find_job(api, state["token"])
            if state["job_id"]:
                _write_state(out_dir, state)
        if state.get("job_id"):
            ctx.logger.info("sft: following OpenAI job %s from %s (no new job is created)",
                            state["job_id"], out_dir / JOB_FILE)
            resumed = True
        else:
            state = _prepare(o, Path(data_dir), out_dir, ctx)
            _write_state(out_dir, state)
            state = _create(api, o, out_dir, state, ctx)
            resumed = False
        job = _follow(api, state["job_id"], o, ctx)
        report = _report(job, state, o, resumed)
        write_json(out_dir / report_name("sft"), report)
        return report


BACKEND = OpenAIBackend()


def _client(o: dict[str, Any]) -> Any:
    from llmops.serving.chat_api import client

    return client(o["base_url"], timeout_s=120)


def _read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / JOB_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StageError(f"sft: cannot read {path} ({e}); it names the OpenAI job of this "
                         "stage. Look the job up (client.fine_tuning.jobs.list()) and delete "
                         "the file only once no job of this run is running.") from e


def _write_state(out_dir: Path, state: dict[str, Any]) -> None:
    from llmops.files import write_json

    write_json(out_dir / JOB_FILE, state)


def _checked(rows: list[dict], file: str, o: dict[str, Any], ctx: Any
             ) -> tuple[list[dict], list[dict]]:
    """Returns (the rows the API takes, the problems); refuses on data.on_error=fail."""
    from llmops.data.openai_ft import check_split, problem_line
    from llmops.planning.openai_ft import example_tokens

    problems = check_split(rows, file, int(o["max_tokens_per_example"]),
                           lambda r: example_tokens(r, o["model"]))
    if problems and o["on_error"] == "fail":
        shown = "\n".join(f"  - {problem_line(p)}" for p in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataRejected(
            f"sft: {len(problems)} problems with OpenAI's fine-tuning rules in {file} and "
            f"data.on_error=fail, so nothing was uploaded:\n{shown}{more}\nFix these rows, or "
            "set data.on_error=keep to upload only the rows the API takes.")
    bad = {p["row"] for p in problems}
    for p in problems:
        ctx.logger.warning("sft: left out (data.on_error=keep): %s", problem_line(p))
    return [r for i, r in enumerate(rows) if i not in bad], problems


def _prepare(o: dict[str, Any], data_dir: Path, out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Checks the splits, counts tokens, checks the cap and writes the upload files."""
    from llmops.data.openai_ft import MIN_EXAMPLES, upload_row
    from llmops.files import read_jsonl, write_jsonl
    from llmops.planning.openai_ft import cost, example_tokens, token_method

    splits, problems = {}, []
    for name in ("train", "val"):
        path = data_dir / f"{name}.jsonl"
        if not path.is_file():
            if name == "val":
                continue
            raise StageError(f"sft: {path} is missing. Rerun the data stage.")
        rows = [r for r in read_jsonl(path) if r.get("label", True) is not False]
        kept, found = _checked(rows, path.name, o, ctx)
        splits[name], problems = kept, problems + found
    if len(splits["train"]) < MIN_EXAMPLES:
        raise DataRejected(f"sft: train.jsonl has {len(splits['train'])} examples the API "
                           f"takes; OpenAI's fine-tuning needs at least {MIN_EXAMPLES} (rule "
                           "'min_examples'). Add rows, or lower data.val_fraction and "
                           "data.test_fraction.")
    if len(splits.get("val") or []) < MIN_EXAMPLES:
        splits.pop("val", None)  # the API refuses a validation file under the minimum too
    tokens = sum(example_tokens(r, o["model"]) for r in splits["train"])
    usd = cost(tokens, o["epochs"], o["price_per_1m_training_tokens_usd"])
    method = token_method(o["model"])
    ctx.logger.info("sft: %d train + %d validation rows, %d tokens x %g epochs = ~$%.2f (tokens "
                    "%s; cap $%g)", len(splits["train"]), len(splits.get("val") or []), tokens,
                    o["epochs"], usd, method, o["max_cost_usd"])
    if usd > o["max_cost_usd"]:
        raise StageError(f"sft: the job would cost ~${usd:,.2f} ({tokens:,} tokens x "
                         f"{o['epochs']:g} epochs x ${o['price_per_1m_training_tokens_usd']:g}/"
                         f"1M; tokens {method}), above train.openai.max_cost_usd="
                         f"{o['max_cost_usd']:g}: nothing was uploaded. Raise the cap or "
                         "train on fewer rows or epochs.")
    upload = out_dir / "upload"
    upload.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(upload / f"{name}.jsonl", [upload_row(r) for r in rows])
    return {"token": uuid.uuid4().hex, "job_id": None, "files": {},
            "rows": {k: len(v) for k, v in splits.items()}, "tokens": tokens,
            "estimated_cost_usd": usd, "token_count": method, "left_out": problems}


def _create(api: Any, o: dict[str, Any], out_dir: Path, state: dict[str, Any], ctx: Any
            ) -> dict[str, Any]:
    """Uploads the files and creates the job, writing each id into the state as it comes."""
    for name in state["rows"]:
        if name in state["files"]:
            continue
        with open(out_dir / "upload" / f"{name}.jsonl", "rb") as f:
            state["files"][name] = api.files.create(file=f, purpose="fine-tune").id
        ctx.logger.info("sft: uploaded %s.jsonl as %s", name, state["files"][name])
        _write_state(out_dir, state)
    hyper = {k: o[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    extra = {"validation_file": state["files"]["val"]} if "val" in state["files"] else {}
    job = api.fine_tuning.jobs.create(
        model=o["model"], training_file=state["files"]["train"], seed=o["seed"],
        suffix=o["suffix"] or None, hyperparameters=hyper,
        metadata={"llmops_token": state["token"]}, **extra)
    state["job_id"] = job.id
    _write_state(out_dir, state)
    ctx.logger.info("sft: created OpenAI job %s (%s); its id is in %s", job.id, job.status,
                    out_dir / JOB_FILE)
    return state


def _find_job(api: Any, token: str) -> str | None:
    """Returns the id of the job created with this attempt's token, if the API has one."""
    for job in api.fine_tuning.jobs.list(metadata={"llmops_token": token}, limit=10):
        if (job.metadata or {}).get("llmops_token") == token:
            return str(job.id)
    return None


def _follow(api: Any, job_id: str, o: dict[str, Any], ctx: Any) -> Any:
    """Polls the job and logs its new events until it is done; returns the finished job."""
    from tqdm.auto import tqdm

    seen: set[str] = set()
    deadline = time.monotonic() + float(o["timeout_hours"]) * 3600
    bar = tqdm(desc=f"sft: OpenAI job {job_id}", unit="step", disable=not ctx.show_progress)
    try:
        while True:
            job = api.fine_tuning.jobs.retrieve(job_id)
            events = list(api.fine_tuning.jobs.list_events(job_id, limit=100))
            for ev in reversed(events):  # the API lists newest first
                if ev.id in seen:
                    continue
                seen.add(ev.id)
                data = ev.data if isinstance(ev.data, dict) else {}
                if "step" in data and "total_steps" in data:
                    bar.total = int(data["total_steps"])
                    bar.n = int(data["step"])
                    bar.set_postfix(loss=data.get("train_loss"))
                    bar.refresh()
                else:
                    ctx.logger.info("sft: OpenAI job %s: %s", job_id, ev.message)
            if job.status in _DONE:
                break
            if time.monotonic() > deadline:
                raise StageError(f"sft: OpenAI job {job_id} is still {job.status} after "
                                 f"train.openai.timeout_hours={o['timeout_hours']:g}. Rerun to "
                                 "keep following it (no new job is created), or cancel it.")
            time.sleep(float(o["poll_seconds"]))
    finally:
        bar.close()
    if job.status != "succeeded":
        err = job.error
        why = (err.message if err is not None and err.message else "no message given")
        raise StageError(f"sft: OpenAI job {job_id} {job.status}: {why}. Fix the cause and "
                         f"delete the stage's {JOB_FILE} to start a new job.")
    return job


def _report(job: Any, state: dict[str, Any], o: dict[str, Any], resumed: bool
            ) -> dict[str, Any]:
    """Returns the training report: the job, the fine-tuned model id, trained tokens, cost."""
    from llmops.planning.openai_ft import cost

    trained = job.trained_tokens  # the API's count: tokens x epochs
    price_cost = cost(trained, 1, o["price_per_1m_training_tokens_usd"]) if trained \
        else state["estimated_cost_usd"]
    return {
        "backend": "openai", "artifact": "api_model", "job_id": job.id,
        "fine_tuned_model": job.fine_tuned_model, "base_model": job.model,
        "status": job.status, "trained_tokens": trained,
        "cost_usd": price_cost, "estimated_cost_usd": state["estimated_cost_usd"],
        "tokens": state["tokens"], "token_count": state["token_count"], "rows": state["rows"],
        "files": state["files"], "left_out": state["left_out"],
        "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
        "resumed_job": resumed, "resumed_from_step": None,
    }
