"""GRPO with TRL's GRPOTrainer on the SFT adapter, rewarded by llmops's own scorers.

The prompts are the train split's tool-call and must-refuse rows (``rewards.checkable``), and
its free-text rows with ``train.grpo.free_text=reward`` (scored by the rouge_l / chrf rewards;
with leave_out, the default, they are left out: no call reward can check them), each rendered
through the model's own chat template with its tools (``generation.build_prompt``, as eval
renders them). Each of the ``num_generations`` completions is read in that template's call
syntax (``templates.answer_parser``, eval's parser) and scored by the rewards named in
``train.grpo.rewards`` (``llmops.scoring.rewards``), weighted. A ``parses`` reward of weight 0
logs the share of completions that parse. Starting from the SFT adapter TRL keeps a frozen copy
as the reference (beta > 0). Held-out: the test split's checkable rows answered greedily before
and after, their mean weighted reward and each reward's mean.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmops.backends.common import peak_memory_mb
from llmops.backends.hf import (
    count_params,
    load_model,
    plot_loss_curve,
    set_cpu_threads,
    trainer_kwargs,
)
from llmops.backends.ranks import is_main_rank, report_fields, trainer_args
from llmops.core.plan import report_name
from llmops.errors import DataRejected
from llmops.files import read_jsonl, write_json

REPORT_NAME = report_name("grpo")
HELD_OUT_ROWS = 64


def checkable_rows(path: Path, free_text: str = "leave_out") -> list[dict[str, Any]]:
    """Returns a split's rows a reward can check (tool calls, must-refuse rows; free-text rows
    too when ``free_text`` is "reward")."""
    from llmops.scoring.rewards import checkable

    rows = read_jsonl(path) if Path(path).is_file() else []
    return [r for r in rows if r.get("label") is not False
            and checkable(r, free_text == "reward")]


def reward_functions(names: list[str], parse: Any) -> list[Any]:
    """Returns one TRL reward function per reward name, plus ``parses`` (its weight 0): each
    reads the completions in the model's syntax and scores them against their rows."""
    from llmops.scoring.rewards import REWARDS

    def make(name: str) -> Any:
        def fn(prompts: list, completions: list, row: list, **_: Any) -> list[float | None]:
            out = []
            for text, raw in zip(completions, row, strict=True):
                parsed = parse(text)
                if name == "parses":
                    out.append(float(not parsed.errors))
                else:
                    out.append(REWARDS[name].value(json.loads(raw), parsed, text))
            return out

        fn.__name__ = name  # TRL logs rewards/<name>/mean
        return fn

    return [make(n) for n in [*names, "parses"]]


def held_out_rewards(model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                     weights: dict[str, float], parse: Any, max_new_tokens: int, ctx: Any
                     ) -> dict[str, Any]:
    """Answers the rows greedily; returns the mean weighted reward, each reward's mean, and the
    share of answers that parse."""
    from llmops.backends.generation import generate
    from llmops.scoring.rewards import REWARDS

    if not rows:
        return {"n": 0}
    answers, _ = generate(model, tokenizer, rows, max_new_tokens=max_new_tokens,
                          show_progress=False, desc="grpo held-out", threads=ctx.threads)
    per: dict[str, list[float]] = {n: [] for n in weights}
    totals, parses = [], 0
    for row, text in zip(rows, answers, strict=True):
        parsed = parse(text)
        parses += not parsed.errors
        total = 0.0
        for name, w in weights.items():
            v = REWARDS[name].value(row, parsed, text)
            if v is not None:
                per[name].append(v)
                total += w * v
        totals.append(total)
    return {"n": len(rows), "mean_reward": round(sum(totals) / len(totals), 6),
            "rewards": {n: round(sum(v) / len(v), 6) if v else None for n, v in per.items()},
            "parse_rate": round(parses / len(rows), 6)}


def grpo_config(params: dict[str, Any], out_dir: Path, ctx: Any) -> Any:
    """Builds TRL's GRPOConfig from the grpo stage params (reward weights in the functions'
    order, ``parses`` last at 0)."""
    from trl import GRPOConfig

    g = params["grpo"]
    common = trainer_kwargs(params["train"], out_dir, ctx)
    common.pop("max_length")  # GRPO bounds the completion (max_completion_length) instead
    return GRPOConfig(
        **common,
        **trainer_args(params.get("distributed")),
        num_generations=int(g["num_generations"]),
        max_completion_length=int(g["max_completion_length"]),
        beta=float(g["beta"]),
        temperature=float(g["temperature"]),
        reward_weights=[float(w) for w in g["rewards"].values()] + [0.0],
    )


def train_grpo(params: dict[str, Any], data_dir: Path, base_model: str, init_adapter: Path,
               out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Trains the SFT adapter with GRPO; writes adapter/ and grpo_report.json.

    Raises:
        DataRejected: When the train split holds no row a reward can check (before a model
            loads).
    """
    from datasets import Dataset
    from peft import PeftModel
    from trl import GRPOTrainer

    from llmops.backends.generation import build_prompt
    from llmops.backends.hf import find_resume_checkpoint, make_callbacks
    from llmops.backends.templates import answer_parser

    out_dir = Path(out_dir)
    g = params["grpo"]
    free_text = str(g["free_text"])
    train_rows = checkable_rows(Path(data_dir) / "train.jsonl", free_text)
    if not train_rows:
        raise DataRejected(f"grpo: {data_dir}/train.jsonl holds no row a reward can check (tool "
                           "calls or must-refuse rows); free-text rows are left out "
                           "(train.grpo.free_text=leave_out). Use data with tool-call rows, set "
                           "train.grpo.free_text=reward with +train.grpo.rewards.rouge_l=1.0, or "
                           "train=sft.")
    test_rows = checkable_rows(Path(data_dir) / "test.jsonl", free_text)[:HELD_OUT_ROWS]
    weights = {n: float(w) for n, w in g["rewards"].items()}
    model, tokenizer = load_model(params, base_model, ctx)
    set_cpu_threads(ctx)
    parse = answer_parser(tokenizer)
    model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    model.eval()
    main = is_main_rank()
    budget = int(g["max_completion_length"])
    tokenizer.padding_side = "left"
    before = held_out_rewards(model, tokenizer, test_rows, weights, parse, budget, ctx) \
        if main else {}
    dataset = Dataset.from_list([
        {"prompt": build_prompt(tokenizer, r["messages"], r.get("tools")),
         "row": json.dumps(r)} for r in train_rows])
    callbacks, start = make_callbacks(ctx, "grpo")
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(list(weights), parse),
                          args=grpo_config(params, out_dir, ctx), train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    resume = find_resume_checkpoint(params["train"].get("resume_dir"))
    if resume:
        ctx.logger.info("grpo: resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    runtime = time.perf_counter() - t0
    trained = trainer.model
    trained.eval()
    if not main:
        return {}
    after = held_out_rewards(trained, tokenizer, test_rows, weights, parse, budget, ctx)
    art_dir = out_dir / "adapter"
    names = list(getattr(trained, "peft_config", {}) or {})
    trained.save_pretrained(str(art_dir), selected_adapters=["default"] if "ref" in names else None)
    tokenizer.save_pretrained(str(art_dir))
    state = trainer.state
    keys = ("loss", "reward", "kl", "completions/mean_length", "rewards/parses/mean",
            *(f"rewards/{n}/mean" for n in weights))
    curve = [{"step": h["step"], **{k: round(float(h[k]), 6) for k in keys
                                    if isinstance(h.get(k), int | float)}}
             for h in state.log_history if "step" in h and "reward" in h]
    held_out = {"start": "sft", "sft": before, "grpo": after}
    if test_rows:
        held_out["improved"] = bool(after["mean_reward"] > before["mean_reward"])
    last = curve[-1] if curve else {}
    trainable, total = count_params(trained)
    report = {
        "backend": "hf", "method": "grpo", "trainer": "trl.GRPOTrainer",
        "artifact": "adapter", "artifact_dir": "adapter", "base_model": base_model,
        "init_adapter": str(init_adapter),
        "reference": ("the starting adapter (a frozen copy)" if float(g["beta"]) > 0
                      else "none (beta 0)"),
        "grpo": g, "prompts": {"train": len(train_rows), "held_out": len(test_rows)},
        "reward_curves": {n: [(p["step"], p[f"rewards/{n}/mean"]) for p in curve
                              if f"rewards/{n}/mean" in p] for n in [*weights, "parses"]},
        "kl_curve": [(p["step"], p["kl"]) for p in curve if "kl" in p],
        "completion_length_curve": [(p["step"], p["completions/mean_length"]) for p in curve
                                    if "completions/mean_length" in p],
        "train_metrics": last, "held_out": held_out, "loss_curve": curve,
        "final_loss": last.get("loss", float(result.training_loss)),
        "train_loss_mean": float(result.training_loss), "train_runtime_s": round(runtime, 3),
        "steps": int(state.global_step), "epochs": round(float(state.epoch or 0.0), 4),
        "trainable_params": trainable, "total_params": total,
        "peak_memory_mb": peak_memory_mb(ctx.device), "device": ctx.device,
        "resumed_from_step": int(start.get("step", 0)) if resume else 0, "resumed_from": resume,
        "start_step": int(start.get("step", 0)),
        **report_fields(params.get("distributed"), trainer),
    }
    if plot_loss_curve([{"step": p["step"], "loss": p["reward"]} for p in curve if "reward" in p],
                       out_dir / "grpo_reward_curve.png", "grpo mean reward"):
        report["reward_curve_png"] = "grpo_reward_curve.png"
    write_json(out_dir / REPORT_NAME, report)
    if test_rows:
        ctx.logger.info("grpo: held-out mean reward sft %.3f -> grpo %.3f (parse rate %.2f -> "
                        "%.2f)", before["mean_reward"], after["mean_reward"],
                        before["parse_rate"], after["parse_rate"])
    return report
