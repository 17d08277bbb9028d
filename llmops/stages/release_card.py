"""The release's model card in Hugging Face's format (huggingface_hub.ModelCard / ModelCardData).

Metadata: the `model-index` eval results (the tuned model's metrics on the held-out test split,
the dataset by name and content hash), base model, datasets, license, tags. Body: intended use and
limits (the use case and the decide report), the gates passed, training figures, how to run it
(Ollama, an OpenAI-compatible endpoint, transformers/peft) and the value case (ROI, API vs
self-host) from the decide report. Every figure is read from a stage's report; none is restated.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

# The metrics of eval_report.json's "tuned" that are not single numbers.
_NOT_METRICS = ("counts", "per_tool")


@dataclass
class CardFacts:
    """What the card describes, gathered by the release stage from its inputs.

    Attributes:
        params: The release stage's params.
        eval: eval_report.json.
        data_hashes: Data file name -> "sha256:<hex>" (train/val/test splits).
        files: Folders and files of the release, by what they are (adapter, merged, gguf, ...).
        decide: decision_report.json, or None without a use case.
        compute: compute_plan.json, or None.
        training: The training stages' reports, by stage (sft, dpo, merge).
        integration: deploy's integration_config.json, or None.
        monitor: Release paths of the monitor stage's baseline and alert rules (may be empty).
        llmops_version: The llmops version that made the release.
    """

    params: dict[str, Any]
    eval: dict[str, Any]
    data_hashes: dict[str, str]
    files: dict[str, Any]
    decide: dict[str, Any] | None = None
    compute: dict[str, Any] | None = None
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    integration: dict[str, Any] | None = None
    monitor: list[str] = field(default_factory=list)
    llmops_version: str = ""


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def dataset_id(params: dict[str, Any]) -> tuple[str, str]:
    """Returns (dataset type, pretty name) of the training data, as the model-index names it."""
    d = params["dataset"]
    if d["source"] == "task_api":
        return "llmops/task_api", "Task-API tool calls (llmops, generated)"
    if d["source"] == "hf":
        return str(d["hf_id"]), str(d["hf_id"])
    names = ", ".join(p.rsplit("/", 1)[-1] for p in d["paths"])
    return "json", names or "local files"


def metrics(eval_report: dict[str, Any]) -> dict[str, float]:
    """Returns the tuned model's single-number metrics of an eval report, by name."""
    tuned = eval_report.get("tuned") or {}
    return {k: float(v) for k, v in tuned.items()
            if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)}


def card_data(f: CardFacts) -> Any:
    """Returns the ModelCardData: model-index results, base model, datasets, license, tags."""
    from huggingface_hub import EvalResult, ModelCardData

    p = f.params
    kind, pretty = dataset_id(p)
    task = (p["usecase"] or {}).get("task_type") or "text generation"
    test_hash = f.data_hashes.get("test.jsonl")
    results = [EvalResult(task_type="text-generation", task_name=task, dataset_type=kind,
                          dataset_name=pretty, dataset_split="test", dataset_revision=test_hash,
                          metric_type=name, metric_name=f"tuned {name}",
                          metric_value=round(value, 6))
               for name, value in metrics(f.eval).items()]
    m, method = p["model"], p["method"]
    tags = ["llmops", method["train"], "lora" if method["lora"] else "full-fine-tune",
            str(m["family"]), *(["peft"] if "adapter" in p["formats"] else []),
            *(["gguf"] if "gguf" in p["formats"] else []), *p["tags"]]
    return ModelCardData(
        model_name=p["name"], license=p["license"], base_model=m["hub_id"] or None,
        datasets=[kind if kind != "json" else pretty], tags=list(dict.fromkeys(tags)),
        library_name="peft" if "adapter" in p["formats"] else "transformers",
        pipeline_tag="text-generation", metrics=list(metrics(f.eval)), eval_results=results,
        version=p["version"], dataset_hashes=dict(f.data_hashes),
    )


def _base_text(p: dict[str, Any]) -> str:
    m = p["model"]
    if m["hub_id"]:
        return f"[{m['hub_id']}](https://huggingface.co/{m['hub_id']})"
    return (f"llmops's tiny {m['family']}-architecture model, built and pre-trained locally "
            f"({_num(m['params'])} parameters, {m['num_layers']} layers, hidden size "
            f"{m['hidden_size']}, vocabulary {m['vocab_size']}, context {m['context_length']}); "
            "a demo model, not for production use")


def _intended_use(f: CardFacts) -> list[str]:
    u, d = f.params["usecase"], f.decide
    out = ["## Intended use", ""]
    if u:
        out += [f"**{u['name']}** ({u['domain']}, task type {u['task_type']}): "
                f"{u['description'].strip() or '(no description given)'}", ""]
    else:
        out += ["No use case was assessed (usecase=none), so no intended use is on record.", ""]
    if d:
        out += [f"Decide stage verdict: **{d.get('verdict')}** "
                f"({'; '.join(d.get('reasons') or [])})."]
        why = (d.get("method") or {}).get("why") or []
        out += [f"Method chosen: {(d.get('method') or {}).get('training')} with "
                f"{(d.get('method') or {}).get('adapter')} ({'; '.join(why)})."] if why else []
        out += [""]
    out += ["## Limits", ""]
    kind, pretty = dataset_id(f.params)
    counts = (f.eval.get("tuned") or {}).get("counts") or {}
    out += [f"- Measured only on the held-out test split of {pretty} "
            f"({_num(f.eval.get('n'))} rows: "
            f"{', '.join(f'{k} {v}' for k, v in counts.items() if k != 'total') or 'n/a'}); "
            "inputs unlike it are not covered by these figures."]
    if not f.params["model"]["hub_id"]:
        out += ["- The base is a tiny demo model: it knows the Task-API tools and little else."]
    for flag in (d or {}).get("red_flags") or []:
        out += [f"- Red flag '{flag.get('flag')}' (\"{flag.get('phrase')}\"): "
                f"{flag.get('suggestion')}"]
    for req in ((d or {}).get("evaluation_rigor") or {}).get("requirements") or []:
        out += [f"- Evaluation requirement: {req}"]
    for alt in (d or {}).get("alternatives") or []:
        out += [f"- Alternative to weigh: {alt}"]
    return [*out, ""]


def _evaluation(f: CardFacts) -> list[str]:
    base, deltas = f.eval.get("base") or {}, f.eval.get("deltas") or {}
    out = ["## Evaluation", "", "| metric | base | tuned | delta |", "|---|---|---|---|"]
    out += [f"| {k} | {_num(base.get(k))} | {_num(v)} | {_num(deltas.get(k))} |"
            for k, v in metrics(f.eval).items()]
    out += ["", "### Gates passed", "", "| gate | rule | value | result |", "|---|---|---|---|"]
    for g in f.eval.get("gates") or []:
        state = f"skipped: {g.get('reason')}" if g.get("skipped") else (
            "passed" if g.get("passed") else "FAILED")
        out += [f"| {g.get('name')} | {g.get('rule')} | {_num(g.get('value'))} | {state} |"]
    return [*out, ""]


_TRAINING_KEYS = ("steps", "epochs", "final_loss", "eval_loss", "train_runtime_s", "tokens_seen",
                  "tokens_per_s", "peak_memory_mb", "trainable_params", "trainable_fraction",
                  "device", "precision", "backend", "job_id", "fine_tuned_model",
                  "trained_tokens", "cost_usd")


def _training(f: CardFacts) -> list[str]:
    p = f.params
    lora = p["method"]["lora"]
    adapter = f"LoRA r{lora['r']} (alpha {_num(lora['alpha'])})" if lora else "full fine-tune"
    out = ["## Training", "", f"- Base model: {_base_text(p)}",
           f"- Method: {p['method']['train']}, {adapter}, quantization {p['method']['quant']}"]
    for stage, report in f.training.items():
        figures = ", ".join(f"{k} {_num(report[k])}" for k in _TRAINING_KEYS if k in report)
        out += [f"- {stage}: {figures or 'see its report'}"]
    c = f.compute
    if c and c.get("backend") == "openai":
        out += [f"- Compute plan: OpenAI fine-tuning of {c.get('model')}, "
                f"~{_num(c.get('cost_usd'))} USD estimated "
                f"(cap {_num(c.get('max_cost_usd'))} USD), "
                f"~{_num(c.get('run_time_h'))} h"]
    elif c:
        out += [f"- Compute plan: {_num(c.get('total_gb'))} GB estimated "
                f"({'fits' if c.get('fits') else 'does not fit'} {_num(c.get('capacity_gb'))} GB), "
                f"~{_num(c.get('run_time_h'))} h, cost {_num(c.get('cost_usd'))} USD"]
    return [*out, ""]


def _how_to_run(f: CardFacts) -> list[str]:
    p, files = f.params, f.files
    name = p["name"]
    # Names are checked at compile time (llmops.config.names); quoted anyway: a JSON string is a
    # Python string literal of the same text.
    sh, py = shlex.quote(name), json.dumps(name, ensure_ascii=False)
    out = ["## How to run", ""]
    if files.get("modelfile"):
        out += ["### Ollama", "", "```sh", f"ollama create {sh} -f Modelfile",
                f"ollama run {sh}", "```", ""]
    if files.get("gguf"):
        gguf = shlex.quote(str(files["gguf"][0]))
        out += ["### An OpenAI-compatible endpoint", "", "```sh",
                f"python -m llama_cpp.server --model {gguf} --host 127.0.0.1 --port 8000 "
                f"--model_alias {sh}", "```", "", "```python", "from openai import OpenAI",
                'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="not-needed")',
                f'reply = client.chat.completions.create(model={py}, '
                'messages=[{"role": "user", "content": "..."}])', "```", ""]
    if f.integration and f.integration.get("target") == "openai_api":
        model = json.dumps(f.integration.get("model"), ensure_ascii=False)
        out += ["### OpenAI's API", "", "The fine-tuned model is served by OpenAI (the key from "
                "OPENAI_API_KEY):", "", "```python", "from openai import OpenAI",
                f"client = OpenAI(base_url={json.dumps(f.integration.get('base_url'))})",
                f"reply = client.chat.completions.create(model={model}, "
                'messages=[{"role": "user", "content": "..."}])', "```", ""]
    if f.integration:
        out += [f"integration_config.json holds the deploy stage's endpoint settings "
                f"(target {f.integration.get('target')}, model {f.integration.get('model')}) "
                "and client snippets.", ""]
    out += ["### transformers / peft", ""]
    if files.get("merged"):
        out += ["The merged model on its own:", "", "```python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                'model = AutoModelForCausalLM.from_pretrained("merged")',
                'tokenizer = AutoTokenizer.from_pretrained("merged")', "```", ""]
    if files.get("adapter"):
        base = json.dumps(p["model"]["hub_id"] or "BASE_MODEL_FOLDER", ensure_ascii=False)
        out += ["The adapter on its base model:", "", "```python", "from peft import PeftModel",
                "from transformers import AutoModelForCausalLM",
                f"base = AutoModelForCausalLM.from_pretrained({base})",
                'model = PeftModel.from_pretrained(base, "adapter")', "```", ""]
    if files.get("adapter") and not p["model"]["hub_id"]:
        out += ["The adapter applies to the tiny base llmops builds locally (not in this "
                "release); use merged/ to run it on its own.", ""]
    return out


def _value(f: CardFacts) -> list[str]:
    out = ["## Value", ""]
    roi = (f.decide or {}).get("roi") or {}
    if not roi.get("assessed"):
        return [*out, "No ROI was assessed (no use case, or its figures were not given).", ""]
    out += ["| figure | value |", "|---|---|"]
    for key in ("monthly_savings_usd", "monthly_costs_usd", "net_monthly_usd", "investment_usd",
                "payback_months", "roi_12_months"):
        out += [f"| {key} | {_num(roi.get(key))} |"]
    be = roi.get("break_even") or {}
    if be:
        out += ["", "API vs self-host:", "", "| figure | value |", "|---|---|"]
        for key in ("api_monthly_usd", "self_host_monthly_usd", "monthly_queries",
                    "break_even_queries_per_month", "break_even_with_investment_12m", "cheaper"):
            out += [f"| {key} | {_num(be.get(key))} |"]
        out += ["", str(be.get("reason") or "")]
    return [*out, ""]


def _contents(f: CardFacts) -> list[str]:
    out = ["## What this release holds", ""]
    out += [f"- `{path}`" for path in f.files.get("listing", [])]
    out += [f"- `{m}` (monitor stage)" for m in f.monitor]
    out += ["", "Verify every file: `sha256sum -c SHA256SUMS` in this folder.", ""]
    if f.data_hashes:
        out += ["Data (content hashes): " + ", ".join(f"{k} {v}" for k, v in f.data_hashes.items()),
                ""]
    return out


def build_card(f: CardFacts) -> Any:
    """Returns the release's huggingface_hub.ModelCard (metadata + body)."""
    from huggingface_hub import ModelCard

    p = f.params
    what = "A LoRA adapter" if p["method"]["lora"] else "A full fine-tune"
    body = [f"# {p['name']} {p['version']}", "",
            f"{what} ({p['method']['train']}) of {_base_text(p)}; trained, evaluated "
            f"and released by llmops {f.llmops_version}. Formats: {', '.join(p['formats'])}.", "",
            *_intended_use(f), *_evaluation(f), *_training(f), *_how_to_run(f), *_value(f),
            *_contents(f)]
    text = "\n".join(body)
    return ModelCard(f"---\n{card_data(f).to_yaml()}\n---\n\n{text}")
