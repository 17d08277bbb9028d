"""KTO with TRL's KTOTrainer on a LoRA adapter (transformers + peft + trl), CPU or GPU.

KTO learns from binary feedback: one answer per prompt, labelled desirable or undesirable. The
rows come from the data stage's train.jsonl (canonical rows carry ``label``: True / False; None
is unlabelled and left out), or, when no row is labelled, from the preference pairs unpaired
(chosen desirable, rejected undesirable), as TRL unpairs them. Both kinds must be present:
without one the stage refuses before loading a model (``DataRejected``, exit 5).

As with DPO, starting from an adapter (the SFT one) TRL keeps a frozen copy as the reference
("ref" adapter); from the base, the reference is the base with the adapter disabled. Held-out
pairs are scored before and after with the DPO stage's code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmops.backends.dpo import (
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
from llmops.core.plan import report_name
from llmops.errors import DataRejected, StageError
from llmops.files import read_jsonl

REPORT_NAME = report_name("kto")
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "kl",
          "logps/chosen", "logps/rejected")


def feedback_rows(data_dir: Path, pair_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Returns KTO's rows ({"prompt", "completion", "label", "tools"}) and where they came from.

    Labelled train rows when any row of train.jsonl is labelled, else the train pairs unpaired.

    Raises:
        DataRejected: When the rows hold no desirable or no undesirable answer.
    """
    split = Path(data_dir) / "train.jsonl"
    rows = read_jsonl(split) if split.is_file() else []
    labelled = [r for r in rows if r.get("label") is not None]
    out: list[dict[str, Any]] = []
    if labelled:
        source = f"labels ({split.name}: label / kto_tag / data.columns.label)"
        for r in labelled:
            msgs = r["messages"]
            out.append({"prompt": msgs[:-1], "completion": msgs[-1:], "label": bool(r["label"]),
                        "tools": r.get("tools")})
    else:
        source = "preference pairs, unpaired (chosen desirable, rejected undesirable)"
        for p in load_pairs(pair_dir, "train"):
            for key, label in (("chosen", True), ("rejected", False)):
                out.append({"prompt": p["prompt"], "completion": p[key], "label": label,
                            "tools": p.get("tools")})
    good = sum(r["label"] for r in out)
    bad = len(out) - good
    if not good or not bad:
        missing = "desirable (label=true)" if not good else "undesirable (label=false)"
        raise DataRejected(
            f"kto: the training rows ({source}) hold {good} desirable and {bad} undesirable "
            f"answers; KTO needs both, and no {missing} row is there. Add rows labelled "
            f"{'true' if not good else 'false'} (the label / kto_tag column, or "
            "data.columns.label), or drop the labels to train on preference pairs (derived, or "
            "data.preference_path).")
    unlabelled = len(rows) - len(labelled) if labelled else 0
    return out, {"source": source, "desirable": good, "undesirable": bad,
                 "unlabelled_left_out": unlabelled}


def feedback_dataset(rows: list[dict[str, Any]]) -> Any:
    """Returns KTO's rows as KTOTrainer's dataset: messages through
    ``llmops.data.chat.template_messages`` held as ``datasets.Json``, tools as JSON text."""
    from datasets import Dataset, Features, Json, Value

    from llmops.data.chat import template_messages, template_tools

    features = Features({"prompt": Json(), "completion": Json(), "label": Value("bool"),
                         "tools": Value("string")})
    return Dataset.from_list([
        {"prompt": template_messages(r["prompt"]), "completion": template_messages(r["completion"]),
         "label": r["label"],
         "tools": json.dumps(template_tools(r["tools"])) if r.get("tools") else None}
        for r in rows], features=features)


def kto_config(params: dict[str, Any], out_dir: Path, ctx: Any) -> Any:
    """Builds TRL's KTOConfig from the kto stage params."""
    from trl import KTOConfig

    k = params["kto"]
    return KTOConfig(
        **trainer_kwargs(params["train"], out_dir, ctx),
        **trainer_args(params.get("distributed")),
        beta=float(k["beta"]),
        desirable_weight=float(k["desirable_weight"]),
        undesirable_weight=float(k["undesirable_weight"]),
    )


def train_kto(params: dict[str, Any], data_dir: Path, pair_dir: Path, pairs: dict[str, Any],
              base_model: str, init_adapter: Path | None, out_dir: Path, ctx: Any
              ) -> dict[str, Any]:
    """Trains a LoRA adapter with KTO; writes adapter/ and kto_report.json.

    Args:
        params: The kto stage params (``llmops.compiler.builders.kto.KtoParams``).
        data_dir: The data stage folder (train.jsonl, its labelled rows).
        pair_dir: The folder of the pairs (pref_train.jsonl, pref_test.jsonl).
        pairs: Where the pairs come from (``llmops.stages.pairs.prepare``'s section), reported.
        base_model: Base model folder or hub id.
        init_adapter: Adapter to continue (the SFT one) or None for a new adapter on the base.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        DataRejected: When the feedback lacks desirable or undesirable rows (before any model
            is loaded).
        StageError: When the batch is smaller than 2 (KTO's KL term needs another row).
    """
    from peft import PeftModel
    from trl import KTOTrainer

    from llmops.backends.hf import find_resume_checkpoint, make_callbacks

    out_dir = Path(out_dir)
    rows, feedback = feedback_rows(data_dir, pair_dir)
    if int(params["train"]["batch_size"]) < 2:
        raise StageError(f"kto: batch size {params['train']['batch_size']}; KTO's KL term pairs "
                         "each row with another row's answer in the batch. Set "
                         "train.kto.batch_size=2 or more.")
    test_pairs = load_pairs(pair_dir, "test")
    beta = float(params["kto"]["beta"])
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
    callbacks, start = make_callbacks(ctx, "kto")
    trainer = KTOTrainer(
        model=model, args=kto_config(params, out_dir, ctx), train_dataset=feedback_dataset(rows),
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
    resume = find_resume_checkpoint(params["train"].get("resume_dir"))
    if resume:
        ctx.logger.info("kto: resuming from %s", resume)
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
    held_out = held_out_pairs("kto", start_name, before, after, test_pairs, beta)
    last = curve[-1] if curve else {}
    report = {
        "backend": "hf",
        "method": "kto",
        "trainer": "trl.KTOTrainer",
        "artifact": "adapter",
        "artifact_dir": "adapter",
        "base_model": base_model,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "reference": ("the starting adapter (a frozen copy)" if init_adapter is not None
                      else "the base model (adapter disabled)"),
        "kto": params["kto"],
        "feedback": feedback,
        "pairs": {**pairs, "test": len(test_pairs)},
        "train_metrics": {k: last.get(k) for k in LOGGED},
        "held_out": held_out,
        **run_fields(trainer, result, curve, runtime, start, resume, params, ctx),
    }
    return write_pairs_report("kto", report, out_dir, test_pairs, ctx)
