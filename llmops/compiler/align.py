"""Builds the alignment and post-training stages: dpo, merge and lm_eval. Pure: no torch.

Kept apart from compile.py so the SFT-only plan reads as before; each builder adds its stage only
when the config asks for it, so a plan without them keeps its fingerprints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops.config.schema import DataConfig
from llmops.core.fingerprint import file_sha256
from llmops.core.plan import TRAINING_STAGES

if TYPE_CHECKING:
    from llmops.compiler.inputs import PlanBuilder, StageInputs

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_files(folder: str | Path) -> dict[str, str]:
    """Returns {path: sha256} of the adapter files in folder (config and weights)."""
    root = Path(folder).expanduser().resolve()
    return {str(root / n): file_sha256(root / n) for n in ADAPTER_FILES if (root / n).is_file()}


def preference_params(d: DataConfig, files: dict[str, str]) -> dict[str, Any]:
    """Returns the data params that make the data stage write preference pairs (+ file hashes)."""
    if d.preference_path:
        p = Path(d.preference_path).expanduser().resolve()
        files[str(p)] = file_sha256(p)
        return {"preferences": "path", "preference_path": str(p)}
    return {"preferences": "derive", "preference_path": None}


def add_dpo(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the dpo stage (train=dpo, sft_dpo): on the sft adapter (sft_dpo), or on the base /
    train.dpo.init_adapter."""
    t, dpo = s.cfg.train, s.cfg.train.dpo
    if t.method not in ("dpo", "sft_dpo"):
        return
    lr = dpo.learning_rate if dpo.learning_rate is not None else t.learning_rate / 25
    dtrain = {**s.train, "learning_rate": lr, "epochs": dpo.epochs, "max_steps": dpo.max_steps,
              "batch_size": dpo.batch_size or s.train["batch_size"]}
    files: dict[str, str] = {}
    init = None
    if t.method == "dpo" and dpo.init_adapter:
        init = str(Path(dpo.init_adapter).expanduser().resolve())
        files = adapter_files(init)
    params = {"model": s.model, "lora": s.lora, "quant": s.quant, "train": dtrain,
              "dpo": {"beta": dpo.beta, "loss_type": dpo.loss_type,
                      "label_smoothing": dpo.label_smoothing},
              "init_adapter": init}
    needs = ["data", *(["sft"] if t.method == "sft_dpo" else []), *s.base]
    start = "the sft adapter" if t.method == "sft_dpo" else (init or "a new adapter on the base")
    steps = f"{dpo.max_steps} steps" if dpo.max_steps > 0 else f"{dpo.epochs:g} epochs"
    b.add("dpo", s.training(params), needs,
          f"DPO beta {dpo.beta:g} ({dpo.loss_type}) from {start}, lr {lr:g}, {steps}", files)


def add_merge(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the merge stage (merge set): the listed adapters (default: the trained one) into the
    base."""
    m = s.cfg.merge
    if m.method == "none":
        return
    names = list(m.adapters)
    if not names:  # the trained adapter; TIES/DARE/cat/svd combine sft and dpo when both exist
        both = b.has("sft") and b.has("dpo") and m.method not in ("linear",)
        names = ["sft", "dpo"] if both else [b.tuned()]
    adapters, needs, files = [], [], {}
    for name in names:
        if name in TRAINING_STAGES:
            adapters.append({"stage": name})
            needs.append(name)
        else:
            path = str(Path(name).expanduser().resolve())
            adapters.append({"path": path})
            files.update(adapter_files(path))
    weights = list(m.weights) or [1.0] * len(adapters)
    params = {"model": s.model, "method": m.method, "adapters": adapters, "weights": weights,
              "density": m.density, "majority_sign_method": m.majority_sign_method,
              "dtype": m.dtype, "quant_trained": s.cfg.quant.type}
    what = " + ".join(f"{w:g}*{n}" for w, n in zip(weights, names, strict=True))
    b.add("merge", params, [*dict.fromkeys(needs), *s.base],
          f"{m.method}: {what} into a {m.dtype} base", files)


def add_lm_eval(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the lm_eval stage (eval enabled, eval.lm_eval.tasks set): harness tasks on the base
    and (when trained) the tuned model."""
    e = s.cfg.eval
    le, tuned = e.lm_eval, b.tuned()
    if not (e.enabled and le.tasks):
        return
    params = {"model": s.model, "tasks": list(le.tasks), "limit": le.limit,
              "num_fewshot": le.num_fewshot, "batch_size": le.batch_size,
              "max_gen_toks": e.max_new_tokens, "logits_mb": e.logits_mb,
              "max_length": s.train["max_length"]}
    needs = ["data", *([tuned] if tuned else []), *s.base]
    b.add("lm_eval", params, needs, f"lm-eval {', '.join(le.tasks)} on base"
          f"{' and tuned' if tuned else ''}{f' (limit {le.limit})' if le.limit else ''}")
