"""ORPO and SimPO: reference-free preference optimisation of a LoRA adapter (transformers + peft
+ trl), CPU or GPU.

Both live in TRL's experimental package (TRL 1.16): ORPO is ``trl.experimental.orpo``'s
ORPOTrainer (SFT loss + beta x the log odds ratio of chosen over rejected), SimPO is
``trl.experimental.cpo``'s CPOTrainer with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no
behaviour-cloning term; the reward is beta x the answer's average log-probability, the margin
target ``simpo_gamma``). Neither keeps a reference model: one model in memory.

The pairs reach the trainers already rendered through the model's own chat template
(``llmops.data.chat.render``, tools included), as strings: the prompt with the generation prompt,
each answer as what the whole conversation adds after it; these trainers' own conversational path
would drop the row's tools. Held-out pairs are scored before and after with the DPO stage's code
(``llmops.backends.dpo.sequence_logps``), so every preference method reports the same figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmops.backends.common import peak_memory_mb
from llmops.backends.dpo import LOGGED, load_pairs, preference_metrics, sequence_logps
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
from llmops.files import write_json

#: Where each method's trainer lives in TRL (as README says).
TRAINERS = {"orpo": "trl.experimental.orpo.ORPOTrainer",
            "simpo": "trl.experimental.cpo.CPOTrainer (loss_type=simpo, cpo_alpha=0)"}


def rendered_pairs(tokenizer: Any, pairs: list[dict[str, Any]]) -> Any:
    """Returns the pairs as a dataset of strings (prompt, chosen, rejected) rendered through the
    model's chat template, tools included."""
    from datasets import Dataset

    from llmops.data.chat import render

    rows = []
    for p in pairs:
        tools = p.get("tools") or None
        prompt = render(tokenizer, p["prompt"], tools, add_generation_prompt=True)
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            full = render(tokenizer, [*p["prompt"], *p[key]], tools)
            if not full.startswith(prompt):
                raise StageError(f"the chat template renders the prompt of a pair differently "
                                 f"alone and followed by its answer ({(p.get('meta') or {})}); "
                                 "ORPO/SimPO need a template whose prompt is a prefix.")
            row[key] = full[len(prompt):]
        rows.append(row)
    return Dataset.from_list(rows)


def method_config(kind: str, params: dict[str, Any], out_dir: Path, ctx: Any) -> Any:
    """Builds TRL's ORPOConfig (orpo) or CPOConfig with SimPO's loss (simpo) from the params."""
    common = {**trainer_kwargs(params["train"], out_dir, ctx),
              **trainer_args(params.get("distributed")), "dataset_num_proc": None}
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, beta=float(params["orpo"]["beta"]))
    from trl.experimental.cpo import CPOConfig

    return CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0,
                     beta=float(params["simpo"]["beta"]),
                     simpo_gamma=float(params["simpo"]["gamma"]))


def train_reference_free(kind: str, params: dict[str, Any], pair_dir: Path,
                         pairs: dict[str, Any], base_model: str, init_adapter: Path | None,
                         out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Trains a LoRA adapter with ORPO or SimPO on pair_dir/pref_train.jsonl; writes adapter/
    and <kind>_report.json.

    Args:
        kind: "orpo" or "simpo".
        params: The stage params (``OrpoParams`` / ``SimpoParams``).
        pair_dir: The folder of the pairs (pref_train.jsonl, pref_test.jsonl).
        pairs: Where the pairs come from (``llmops.stages.pairs.prepare``'s section), reported.
        base_model: Base model folder or hub id.
        init_adapter: The SFT adapter to continue (sft_<kind>), or None for a new adapter.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When there are no training pairs.
    """
    from peft import PeftModel

    from llmops.backends.hf import find_resume_checkpoint, make_callbacks

    out_dir = Path(out_dir)
    train_pairs = load_pairs(pair_dir, "train")
    if not train_pairs:
        raise StageError(f"{kind}: no preference pairs in {pair_dir}/pref_train.jsonl. Give "
                         "pairs with data.preference_path=FILE (prompt/chosen/rejected).")
    test_pairs = load_pairs(pair_dir, "test")
    beta = float(params[kind]["beta"])
    model, tokenizer = load_model(params, base_model, ctx)
    set_cpu_threads(ctx)
    peft_config = None
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        peft_config = lora_config(params["lora"])
    model.eval()
    main = is_main_rank()
    before = sequence_logps(model, tokenizer, test_pairs) if main else []
    args = method_config(kind, params, out_dir, ctx)
    callbacks, start = make_callbacks(ctx, kind)
    if kind == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo import CPOTrainer as Trainer
    trainer = Trainer(model=model, args=args, train_dataset=rendered_pairs(tokenizer, train_pairs),
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    resume = find_resume_checkpoint(params["train"].get("resume_dir"))
    if resume:
        ctx.logger.info("%s: resuming from %s", kind, resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    runtime = time.perf_counter() - t0
    trained = trainer.model
    trained.eval()
    if not main:
        return {}
    after = sequence_logps(trained, tokenizer, test_pairs)
    art_dir = out_dir / "adapter"
    trained.save_pretrained(str(art_dir))
    tokenizer.save_pretrained(str(art_dir))
    state = trainer.state
    logged = (*LOGGED, "log_odds_ratio", "nll_loss")
    curve = [{"step": h["step"], **{k: round(float(h[k]), 6) for k in logged if k in h}}
             for h in state.log_history if "loss" in h and "step" in h]
    start_name = "sft" if init_adapter is not None else "base"
    held_out: dict[str, Any] = {
        "start": start_name,
        start_name: preference_metrics(before, test_pairs, before, beta),
        kind: preference_metrics(after, test_pairs, before, beta),
    }
    if test_pairs:
        s, d = held_out[start_name], held_out[kind]
        held_out["improved"] = bool(d["logp_margin"] > s["logp_margin"]
                                    and d["logp_accuracy"] >= s["logp_accuracy"])
    last = curve[-1] if curve else {}
    trainable, total = count_params(trained)
    report = {
        "backend": "hf",
        "method": kind,
        "trainer": TRAINERS[kind],
        "artifact": "adapter",
        "artifact_dir": "adapter",
        "base_model": base_model,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "reference": None,
        kind: params[kind],
        "pairs": {**pairs, "train": len(train_pairs), "test": len(test_pairs)},
        "train_metrics": {k: last.get(k) for k in logged},
        "held_out": held_out,
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
    if plot_loss_curve([p for p in curve if "loss" in p], out_dir / f"{kind}_loss_curve.png",
                       f"{kind} (hf, adapter)"):
        report["loss_curve_png"] = f"{kind}_loss_curve.png"
    write_json(out_dir / report_name(kind), report)
    if test_pairs:
        ctx.logger.info("%s: held-out pairs: %s logp accuracy %.3f margin %.2f -> %.3f / %.2f",
                        kind, start_name, held_out[start_name]["logp_accuracy"],
                        held_out[start_name]["logp_margin"], held_out[kind]["logp_accuracy"],
                        held_out[kind]["logp_margin"])
    return report
