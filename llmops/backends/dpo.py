"""DPO with TRL's DPOTrainer on a LoRA adapter (transformers + peft + trl), CPU or GPU.

Starting from an adapter (the SFT one), TRL keeps a frozen copy of it as the reference ("ref"
adapter), so DPO pulls towards the SFT model, not the base. Starting from the base, a new adapter is
created and the reference is the base (adapter disabled). Only the trained adapter is saved.

Held-out pairs (pref_test.jsonl) are scored before and after training with the same code:
sequence log-probabilities of chosen and rejected answers under the policy, and DPO's implicit
rewards beta * (log pi - log pi_ref) against the starting model.
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
    lora_config,
    plot_loss_curve,
    set_cpu_threads,
    trainer_kwargs,
)
from llmops.backends.ranks import is_main_rank, report_fields, trainer_args
from llmops.core.plan import report_name
from llmops.errors import StageError
from llmops.files import read_jsonl, write_json

REPORT_NAME = report_name("dpo")
PAIR_KEYS = ("prompt", "chosen", "rejected")
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def load_pairs(data_dir: Path, split: str) -> list[dict[str, Any]]:
    """Reads pref_<split>.jsonl from the data stage folder (empty list when absent)."""
    path = Path(data_dir) / f"pref_{split}.jsonl"
    return read_jsonl(path) if path.is_file() else []


def sequence_logps(model: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> list[tuple]:
    """Returns (logp chosen, logp rejected) per pair: summed over the answer's tokens.

    The prompt is rendered with the chat template and the generation prompt; the answer is what the
    template adds after it for the whole conversation (so end-of-turn tokens count too). Both go
    through ``llmops.data.chat.render`` (call arguments as objects), as training renders them.
    """
    import torch

    from llmops.data.chat import render

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():  # on the run's CPU threads: train_dpo set them (set_cpu_threads)
        for pair in pairs:
            tools = pair.get("tools") or None  # as DPOTrainer renders the pair
            prompt = render(tokenizer, pair["prompt"], tools, add_generation_prompt=True)
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            scores = []
            for key in ("chosen", "rejected"):
                full = render(tokenizer, [*pair["prompt"], *pair[key]], tools)
                ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
                ids = ids.to(device)
                logits = model(input_ids=ids).logits[0, :-1].float()
                logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
                scores.append(float(logp[n_prompt - 1:].sum()))
            out.append(tuple(scores))
    return out


def pair_dataset(pairs: list[dict[str, Any]]) -> Any:
    """Returns the pairs as DPOTrainer's dataset, in the form its chat template renders:
    messages through ``llmops.data.chat.template_messages`` (call arguments as objects) held as
    ``datasets.Json`` (Arrow would merge every call's arguments into one struct, adding null keys),
    tools as JSON text (TRL parses it)."""
    from datasets import Dataset, Features, Json, Value

    from llmops.data.chat import template_messages, template_tools

    features = Features({**{k: Json() for k in PAIR_KEYS}, "tools": Value("string")})
    return Dataset.from_list([
        {**{k: template_messages(p[k]) for k in PAIR_KEYS},
         "tools": json.dumps(template_tools(p.get("tools"))) if p.get("tools") else None}
        for p in pairs], features=features)


def preference_metrics(logps: list[tuple], pairs: list[dict[str, Any]],
                       ref: list[tuple] | None = None, beta: float = 0.1) -> dict[str, Any]:
    """Scores held-out pairs: how often and by how much the model prefers chosen over rejected.

    Returns:
        {"n", "logp_accuracy", "logp_margin", "by_kind": {kind: logp_accuracy}} plus, against a
        reference, DPO's implicit rewards: "rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies" (as TRL defines them).
    """
    if not logps:
        return {"n": 0}
    n = len(logps)
    wins = [c > r for c, r in logps]
    kinds: dict[str, list[bool]] = {}
    for pair, win in zip(pairs, wins, strict=True):
        kinds.setdefault(str((pair.get("meta") or {}).get("kind")), []).append(win)
    out: dict[str, Any] = {
        "n": n,
        "logp_accuracy": round(sum(wins) / n, 6),
        "logp_margin": round(sum(c - r for c, r in logps) / n, 6),
        "by_kind": {k: round(sum(v) / len(v), 6) for k, v in sorted(kinds.items())},
    }
    if ref is not None:
        rc = [beta * (c - rc_) for (c, _), (rc_, _) in zip(logps, ref, strict=True)]
        rr = [beta * (r - rr_) for (_, r), (_, rr_) in zip(logps, ref, strict=True)]
        out.update({
            "rewards/chosen": round(sum(rc) / n, 6),
            "rewards/rejected": round(sum(rr) / n, 6),
            "rewards/margins": round(sum(a - b for a, b in zip(rc, rr, strict=True)) / n, 6),
            "rewards/accuracies": round(sum(a > b for a, b in zip(rc, rr, strict=True)) / n, 6),
        })
    return out


def held_out_pairs(kind: str, start_name: str, before: list[tuple], after: list[tuple],
                   test_pairs: list[dict[str, Any]], beta: float) -> dict[str, Any]:
    """Returns a preference stage's held-out figures: the starting model's and the trained one's
    (``preference_metrics``), and whether training improved the margin without losing accuracy."""
    held_out: dict[str, Any] = {
        "start": start_name,
        start_name: preference_metrics(before, test_pairs, before, beta),
        kind: preference_metrics(after, test_pairs, before, beta),
    }
    if test_pairs:
        s, d = held_out[start_name], held_out[kind]
        held_out["improved"] = bool(d["logp_margin"] > s["logp_margin"]
                                    and d["logp_accuracy"] >= s["logp_accuracy"])
    return held_out


def run_fields(trainer: Any, result: Any, curve: list[dict[str, Any]], runtime: float,
               start: dict[str, Any], resume: str | None, params: dict[str, Any],
               ctx: Any) -> dict[str, Any]:
    """Returns the fields every TRL-trained stage's report shares, from its loss curve on (the
    run's loss, time, steps, parameters, memory, resume point and distributed figures)."""
    last = curve[-1] if curve else {}
    trainable, total = count_params(trainer.model)
    state = trainer.state
    return {
        "loss_curve": curve,
        "final_loss": last.get("loss", float(result.training_loss)),
        "train_loss_mean": float(result.training_loss),
        "train_runtime_s": round(runtime, 3),
        "steps": int(state.global_step),
        "epochs": round(float(state.epoch or 0.0), 4),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "device": ctx.device,
        "resumed_from_step": int(start.get("step", 0)) if resume else 0,
        "resumed_from": resume,
        "start_step": int(start.get("step", 0)),
        **report_fields(params.get("distributed"), trainer),
    }


def write_pairs_report(kind: str, report: dict[str, Any], out_dir: Path, test_pairs: list,
                       ctx: Any) -> dict[str, Any]:
    """Plots the loss curve beside a preference stage's report, writes the report and logs its
    held-out figures; returns the report."""
    curve, held_out = report["loss_curve"], report["held_out"]
    if plot_loss_curve([p for p in curve if "loss" in p], out_dir / f"{kind}_loss_curve.png",
                       f"{kind} (hf, adapter)"):
        report["loss_curve_png"] = f"{kind}_loss_curve.png"
    write_json(out_dir / report_name(kind), report)
    if test_pairs:
        start_name = held_out["start"]
        ctx.logger.info("%s: held-out pairs: %s logp accuracy %.3f margin %.2f -> %s %.3f / %.2f",
                        kind, start_name, held_out[start_name]["logp_accuracy"],
                        held_out[start_name]["logp_margin"], kind, held_out[kind]["logp_accuracy"],
                        held_out[kind]["logp_margin"])
    return report


def dpo_config(params: dict[str, Any], out_dir: Path, ctx: Any) -> Any:
    """Builds TRL's DPOConfig from the dpo stage params."""
    from trl import DPOConfig

    dpo = params["dpo"]
    return DPOConfig(
        **trainer_kwargs(params["train"], out_dir, ctx),
        **trainer_args(params.get("distributed")),
        beta=float(dpo["beta"]),
        loss_type=[str(dpo["loss_type"])],
        label_smoothing=float(dpo["label_smoothing"]),
    )


def train_dpo(params: dict[str, Any], data_dir: Path, pairs: dict[str, Any], base_model: str,
              init_adapter: Path | None, out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Trains a LoRA adapter with DPO on data_dir/pref_train.jsonl; writes adapter/ and the report.

    Args:
        params: The dpo stage params (``llmops.compiler.builders.dpo.DpoParams``).
        data_dir: The folder of the pairs (pref_train.jsonl, pref_test.jsonl).
        pairs: Where the pairs come from (``llmops.stages.pairs.prepare``'s section), reported.
        base_model: Base model folder or hub id.
        init_adapter: Adapter to continue (the SFT one) or None for a new adapter on the base.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When there are no training pairs.
    """
    from peft import PeftModel
    from trl import DPOTrainer

    from llmops.backends.hf import find_resume_checkpoint, make_callbacks

    out_dir = Path(out_dir)
    train_pairs = load_pairs(data_dir, "train")
    if not train_pairs:
        raise StageError(f"dpo: no preference pairs in {data_dir}/pref_train.jsonl. Give pairs "
                         "with data.preference_path=FILE (prompt/chosen/rejected).")
    test_pairs = load_pairs(data_dir, "test")
    beta = float(params["dpo"]["beta"])
    model, tokenizer = load_model(params, base_model, ctx)
    set_cpu_threads(ctx)
    peft_config = None
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        peft_config = lora_config(params["lora"])
    model.eval()
    main = is_main_rank()  # the held-out scores and every file come from rank 0
    before = sequence_logps(model, tokenizer, test_pairs) if main else []
    args = dpo_config(params, out_dir, ctx)
    callbacks, start = make_callbacks(ctx, "dpo")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=pair_dataset(train_pairs),
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
    resume = find_resume_checkpoint(params["train"].get("resume_dir"))
    if resume:
        ctx.logger.info("dpo: resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    runtime = time.perf_counter() - t0
    trained = trainer.model
    trained.eval()
    if not main:
        return {}
    after = sequence_logps(trained, tokenizer, test_pairs)
    art_dir = out_dir / "adapter"
    names = list(getattr(trained, "peft_config", {}) or {})
    trained.save_pretrained(str(art_dir), selected_adapters=["default"] if "ref" in names else None)
    tokenizer.save_pretrained(str(art_dir))
    state = trainer.state
    curve = [{"step": h["step"], **{k: round(float(h[k]), 6) for k in LOGGED if k in h}}
             for h in state.log_history if "loss" in h and "step" in h]
    start_name = "sft" if init_adapter is not None else "base"
    held_out = held_out_pairs("dpo", start_name, before, after, test_pairs, beta)
    last = curve[-1] if curve else {}
    report = {
        "backend": "hf",
        "method": "dpo",
        "artifact": "adapter",
        "artifact_dir": "adapter",
        "base_model": base_model,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "reference": ("the starting adapter (a frozen copy)" if init_adapter is not None
                      else "the base model (adapter disabled)"),
        "dpo": params["dpo"],
        "pairs": {**pairs, "train": len(train_pairs), "test": len(test_pairs)},
        "train_metrics": {k: last.get(k) for k in LOGGED},
        "held_out": held_out,
        **run_fields(trainer, result, curve, runtime, start, resume, params, ctx),
    }
    return write_pairs_report("dpo", report, out_dir, test_pairs, ctx)
