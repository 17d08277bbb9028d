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

from llmops.backends.dpo import (
    LOGGED,
    held_out_pairs,
    load_pairs,
    run_fields,
    sequence_logps,
    write_pairs_report,
)
from llmops.backends.hf import (
    load_model,
    lora_config,
    set_cpu_threads,
    trainer_kwargs,
)
from llmops.backends.ranks import is_main_rank, trainer_args
from llmops.errors import StageError

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
    held_out = held_out_pairs(kind, start_name, before, after, test_pairs, beta)
    last = curve[-1] if curve else {}
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
        **run_fields(trainer, result, curve, runtime, start, resume, params, ctx),
    }
    return write_pairs_report(kind, report, out_dir, test_pairs, ctx)
