"""Stage `lm_eval`: lm-evaluation-harness tasks on the base and the tuned model.

Local tasks (llmops_task_api_choice, llmops_task_api_call; YAMLs in llmops/stages/lm_eval_tasks/)
run offline over the data stage's test.jsonl: the stage renders each prompt with the model's chat
template, writes the task data and YAMLs with absolute paths into its own folder, and points the
harness there. Any other name is a standard harness task (hellaswag, arc_easy, mmlu_*; these
download their data). The tuned model is base + adapter through model_args peft=..., or the merged
/ fully fine-tuned folder. The harness builds batch x length x vocab logits: the stage picks its
batch so they stay within eval.logits_mb (``harness_batch``). Writes lm_eval_report.json {tasks,
base, tuned, deltas, harness_batch_size, longest_request}.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from llmops.compiler.builders.lm_eval import LmEvalParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError

REPORT_NAME = report_name("lm_eval")
TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("llmops_task_api_choice", "llmops_task_api_call")
STOPS = ("<|im_end|>", "<|eot_id|>", "<|end|>")


def _stop(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    return next((s for s in STOPS if s in vocab), tokenizer.eos_token or "\n\n")


def _choices(row: dict[str, Any], rng: random.Random, render: Any) -> list[str]:
    """Returns [correct answer, wrong answers...] for one test row, as ``render`` writes an
    assistant message (the model's own call syntax)."""
    from llmops.data import preferences, task_api

    last = row["messages"][-1]
    if last.get("tool_calls"):
        wrong = [preferences.rejected_for(row, rng, k)
                 for k in ("legacy_v1", "wrong_tool", "wrong_argument")]
    elif (row.get("meta") or {}).get("refuse"):
        wrong = [{"role": "assistant", "content": None, "tool_calls": [task_api.tool_call(
            "create_task", {"title": rng.choice(task_api._TITLES)}, "call_0")]}]
    else:
        return []
    answer = render(last)
    return [answer, *dict.fromkeys(w for w in map(render, wrong) if w != answer)]


def write_local_tasks(rows: list[dict], tokenizer: Any, out: Path, max_tokens: int,
                      seed: int = 0) -> Path:
    """Writes the local task data (prompts rendered with the chat template) and YAMLs into out.

    Returns:
        The folder to pass to the harness's TaskManager(include_path=...).
    """
    from llmops.files import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    calls, choices = [], []
    from llmops.backends.generation import build_prompt, render_answer

    for row in rows:
        prompt = build_prompt(tokenizer, row["messages"], row.get("tools"))

        def render(message: dict, row: dict = row) -> str:
            return render_answer(tokenizer, [*row["messages"][:-1], message], row.get("tools"))

        calls.append({"prompt": prompt, "answer": render(row["messages"][-1])})
        opts = _choices(row, rng, render)
        if len(opts) > 1:
            choices.append({"prompt": prompt, "choices": opts, "gold": 0})
    write_jsonl(out / "task_api_call.jsonl", calls)
    write_jsonl(out / "task_api_choice.jsonl", choices)
    for name in LOCAL_TASKS:
        text = (TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        text = (text.replace("__DATA__", str(out.resolve())).replace("__STOP__", _stop(tokenizer))
                .replace("__MAX_TOKENS__", str(int(max_tokens))))
        (out / f"{name}.yaml").write_text(text, encoding="utf-8")
    return out


def _scores(results: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, float]]:
    """Keeps each task's metrics as {metric: float} (numpy floats made plain; stderr dropped)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in (results.get("results") or {}).items():
        if task not in tasks and not any(task.startswith(t) for t in tasks):
            continue
        scores: dict[str, float] = {}
        for key, value in metrics.items():
            if "," not in key or "stderr" in key:
                continue
            try:
                scores[key.split(",")[0]] = float(value)
            except (TypeError, ValueError):
                continue
        out[task] = scores
    return out


def longest_request(tasks: list[str], task_dir: Path | None, tokenizer: Any,
                    params: dict[str, Any]) -> int:
    """Returns the longest request in tokens the harness will batch: a local task's prompt + its
    longest choice, or prompt + max_gen_toks; params["max_length"] for any other task."""
    from llmops.files import read_jsonl

    longest = 0 if all(t in LOCAL_TASKS for t in tasks) else int(params["max_length"])
    if task_dir is None:
        return max(1, longest)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for row in read_jsonl(task_dir / "task_api_choice.jsonl"):
        longest = max([longest, *(count(row["prompt"] + c) for c in row["choices"])])
    for row in read_jsonl(task_dir / "task_api_call.jsonl"):
        longest = max(longest, count(row["prompt"]) + int(params["max_gen_toks"]))
    return max(1, longest)


def harness_batch(params: dict[str, Any], longest: int, vocab_size: int) -> int:
    """Returns the harness batch size: its batch x length x vocab logits (and their log-softmax)
    stay within eval.logits_mb (``llmops.planning.eval_memory.harness_batch``), at most
    eval.lm_eval.batch_size, at least one request."""
    from llmops.planning.eval_memory import harness_batch as bounded

    return bounded(vocab_size, float(params["logits_mb"]), longest, int(params["batch_size"]))


def task_manager(tasks: list[str], task_dir: Path | None) -> Any:
    """Returns the harness's TaskManager for these tasks, built once per stage (both models).

    Its index of the harness's own ~15K task configs costs ~12 CPU-s to build: it is built only
    when a task is not local (the local tasks' YAMLs in task_dir need nothing from it)."""
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        return TaskManager()
    return TaskManager(include_path=str(task_dir),
                       include_defaults=not all(t in LOCAL_TASKS for t in tasks))


def evaluate(model_args: dict[str, Any], tasks: list[str], manager: Any,
             params: dict[str, Any], device: str) -> dict[str, Any]:
    """Runs lm_eval.simple_evaluate(model="hf") with the stage's TaskManager (``task_manager``)
    and returns its raw results.

    params["batch_size"] is the bounded harness batch (``harness_batch``)."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model="hf", model_args={**model_args, "device": device,
                                "dtype": "float32" if device == "cpu" else "auto"},
        tasks=tasks, num_fewshot=params.get("num_fewshot"), limit=params.get("limit"),
        batch_size=int(params["batch_size"]), task_manager=manager,
        log_samples=False, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
        torch_random_seed=0, fewshot_random_seed=0,
    ) or {}


def run(params: LmEvalParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Runs the harness tasks on the base and (when trained) the tuned model.

    Params read: model, tasks, limit, num_fewshot, batch_size, max_gen_toks, logits_mb,
    max_length (the longest request assumed for a harness task that is not local).
    Inputs: "data" (test.jsonl), "merge"|"dpo"|"sft" (the tuned model), "base" for the tiny model.

    Returns:
        The report written to lm_eval_report.json.
    """
    import importlib.util

    from transformers import AutoConfig

    from llmops.backends.generation import load_tokenizer
    from llmops.files import read_jsonl, write_json
    from llmops.stages.common import base_model_path, set_seed
    from llmops.stages.eval import tuned_artifact, tuned_input

    if importlib.util.find_spec("lm_eval") is None:
        raise StageError("lm_eval: lm-evaluation-harness is not installed. "
                         "pip install 'llmops[lm_eval]', or leave eval.lm_eval.tasks empty.")
    tasks = list(params.get("tasks") or [])
    if not tasks:
        raise StageError("lm_eval: no tasks. Set eval.lm_eval.tasks=[llmops_task_api_choice].")
    set_seed(ctx.seed)
    out_dir = Path(out_dir)
    base = base_model_path(params, inputs)
    trust = bool(params["model"]["trust_remote_code"])
    model_args: dict[str, Any] = {"pretrained": base, "trust_remote_code": trust}
    tuned_args = None
    tuned_in = tuned_input(inputs)
    if tuned_in is not None:
        artifact, path = tuned_artifact(tuned_in[1], "lm_eval")
        tuned_args = ({**model_args, "peft": str(path)} if artifact == "adapter"
                      else {**model_args, "pretrained": str(path)})
    task_dir = None
    tok_dir = tuned_args.get("peft", tuned_args["pretrained"]) if tuned_args else base
    tokenizer = load_tokenizer(tok_dir if Path(tok_dir, "tokenizer_config.json").is_file()
                               else base, trust_remote_code=trust)
    if any(t in LOCAL_TASKS for t in tasks):
        if inputs.get("data") is None:
            raise StageError("lm_eval: local tasks need the 'data' input (test.jsonl).")
        rows = read_jsonl(Path(inputs["data"]) / "test.jsonl")
        task_dir = write_local_tasks(rows, tokenizer, out_dir / "tasks",
                                     int(params["max_gen_toks"]), ctx.seed)
    longest = longest_request(tasks, task_dir, tokenizer, params)
    vocab = int(AutoConfig.from_pretrained(str(base), trust_remote_code=trust).vocab_size)
    batch = harness_batch(params, longest, vocab)
    ctx.logger.info("lm_eval: harness batch %d (longest request %d tokens x %d vocab within "
                    "eval.logits_mb %g)", batch, longest, vocab, params["logits_mb"])
    params = {**params, "batch_size": batch}
    report: dict[str, Any] = {"tasks": tasks, "limit": params.get("limit"),
                              "num_fewshot": params.get("num_fewshot"),
                              "task_dir": "tasks" if task_dir else None,
                              "harness_batch_size": batch, "longest_request": longest,
                              "model_args": {"base": model_args, "tuned": tuned_args}}
    manager = task_manager(tasks, task_dir)
    ctx.logger.info("lm_eval: %s on the base model", ", ".join(tasks))
    raw_base = evaluate(model_args, tasks, manager, params, ctx.device)
    report["base"] = _scores(raw_base, tasks)
    report["versions"] = raw_base.get("versions")
    if tuned_args is not None:
        ctx.logger.info("lm_eval: %s on the tuned model (%s)", ", ".join(tasks), tuned_in[0])
        report["tuned"] = _scores(evaluate(tuned_args, tasks, manager, params, ctx.device), tasks)
        report["deltas"] = {
            task: {m: round(v - report["base"].get(task, {}).get(m, float("nan")), 10)
                   for m, v in metrics.items()}
            for task, metrics in report["tuned"].items()
        }
    for side in ("base", "tuned"):
        for task, metrics in (report.get(side) or {}).items():
            ctx.logger.info("lm_eval: %s %s %s", side, task,
                            ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    write_json(out_dir / REPORT_NAME, report)
    return report
