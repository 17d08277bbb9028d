"""Fixes for a stage that does not fit: the overrides of that stage's own knobs, each with the
stage's estimate under it. Pure: no torch.

sft keeps the training fixes of ``llmops.planning.fixes``; the other stages halve their own
knobs (eval.token_budget, eval.batch_size, eval.max_new_tokens, train.dpo.batch_size,
eval.lm_eval.batch_size, ...), switch a stage off or to a smaller file, or pick a smaller model
of the same family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from llmops.planning import fixes
from llmops.planning.memory import GIB
from llmops.planning.stage_memory import (
    GGUF_BYTES,
    HOST_STAGES,
    capacities,
    gguf_types,
    stage_parts,
    writing_gguf,
)

Change = dict[str, Any]


def _merge(inputs: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(inputs)
    for key, value in patch.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
    return out


class _Candidate:
    """One configuration of a stage: the overrides that lead to it and its inputs."""

    def __init__(self, stage: str, args: dict[str, Any], overrides: list[str]):
        self.stage, self.args, self.overrides = stage, args, overrides

    def with_(self, override: str, **change: Any) -> _Candidate:
        args = dict(self.args)
        for key, value in change.items():
            args[key] = _merge(args[key], value) if key == "inputs" else value
        return _Candidate(self.stage, args, [*self.overrides, override])

    def gb(self) -> tuple[float, float]:
        """Returns (GB where the stage runs its model, host GB)."""
        a = self.args
        parts, host, _ = stage_parts(self.stage, a["model"], a["lora"], a["quant"], a["train"],
                                     a["hardware"], a["inputs"], a["distributed"])
        total = sum(parts.values()) / GIB
        cuda = a["hardware"].get("device") == "cuda"
        if not cuda or self.stage in HOST_STAGES:
            return (0.0 if cuda else total), total
        return total, host / GIB


def _fits(gb: tuple[float, float], hardware: dict[str, Any]) -> bool:
    dev, host = capacities(hardware)
    return (dev is None or gb[0] <= dev) and (host is None or gb[1] <= host)


def _halving(c: _Candidate, hardware: dict, key: str, value: int, floor: int,
             make: Any) -> _Candidate | None:
    """Halves a knob until the stage fits (or the floor); returns the last candidate tried."""
    last = None
    while value // 2 >= floor:
        value //= 2
        last = make(value)
        if _fits(last.gb(), hardware):
            return last
    return last


def _eval_steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
    ev = c.args["inputs"]["eval"]
    if ev.get("token_budget"):
        yield _halving(c, hardware, "token_budget", int(ev["token_budget"]), 128, lambda v: c.with_(
            f"eval.token_budget={v}", inputs={"eval": {"token_budget": v}}))
    yield _halving(c, hardware, "batch_size", int(ev["batch_size"]), 1, lambda v: c.with_(
        f"eval.batch_size={v}", inputs={"eval": {"batch_size": v}}))
    yield _halving(c, hardware, "max_new_tokens", int(ev["max_new_tokens"]), 16,
                   lambda v: c.with_(f"eval.max_new_tokens={v}",
                                     inputs={"eval": {"max_new_tokens": v}}))
    yield _halving(c, hardware, "max_length", int(c.args["inputs"]["max_length"]), 128,
                   lambda v: c.with_(f"data.max_length={v}", inputs={"max_length": v}))


def _lm_eval_steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
    ev = c.args["inputs"]["eval"]
    le = dict(ev.get("lm_eval") or {})
    yield c.with_("eval.lm_eval.batch_size=1", inputs={"eval": {"lm_eval": {
        **le, "batch_size": 1}}}) if int(le.get("batch_size") or 1) > 1 else None
    if ev.get("logits_mb"):
        yield _halving(c, hardware, "logits_mb", int(ev["logits_mb"]), 16, lambda v: c.with_(
            f"eval.logits_mb={v}", inputs={"eval": {"logits_mb": v}}))


def _preference_steps(kind: str) -> Callable[[_Candidate, dict], Iterator[_Candidate | None]]:
    def steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
        yield from _dpo_steps(c, hardware, kind)
    return steps


def _dpo_steps(c: _Candidate, hardware: dict, kind: str = "dpo"
               ) -> Iterator[_Candidate | None]:
    b = int(c.args["inputs"][kind].get("batch_size") or c.args["train"]["batch_size"])
    yield _halving(c, hardware, "batch_size", b, 1, lambda v: c.with_(
        f"train.{kind}.batch_size={v}", inputs={kind: {"batch_size": v}}))
    yield None if c.args["train"].get("gradient_checkpointing") else c.with_(
        "train.gradient_checkpointing=true",
        train={**c.args["train"], "gradient_checkpointing": True})


def _grpo_steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
    g = c.args["inputs"]["grpo"]
    n = int(g["num_generations"])
    yield None if n <= 2 else c.with_(
        f"train.grpo.num_generations={max(2, n // 2)} train.grpo.batch_size={max(2, n // 2)}",
        inputs={"grpo": {**g, "num_generations": max(2, n // 2), "batch_size": max(2, n // 2)}})
    yield _halving(c, hardware, "max_completion_length", int(g["max_completion_length"]), 16,
                   lambda v: c.with_(f"train.grpo.max_completion_length={v}",
                                     inputs={"grpo": {**g, "max_completion_length": v}}))


def _gguf_steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
    smallest = min(GGUF_BYTES, key=GGUF_BYTES.__getitem__)  # q4_k_m
    override, inputs = writing_gguf([smallest])
    yield None if gguf_types(c.args["inputs"]) == [smallest] else c.with_(override, inputs=inputs)


def _ctx_steps(c: _Candidate, hardware: dict) -> Iterator[_Candidate | None]:
    yield from _gguf_steps(c, hardware)
    m = c.args["model"]
    yield _halving(c, hardware, "context_length", int(m["context_length"]), 2048,
                   lambda v: c.with_(f"model.context_length={v}",
                                     model={**m, "context_length": v}))


#: The knobs tried per stage; the off switch last.
STEPS = {"eval": _eval_steps, "eval_base": _eval_steps, "lm_eval": _lm_eval_steps,
         "dpo": _dpo_steps, "orpo": _preference_steps("orpo"),
         "simpo": _preference_steps("simpo"), "kto": _preference_steps("kto"), "grpo": _grpo_steps,
         "gguf": _gguf_steps, "deploy": _ctx_steps}
OFF = {"eval": "eval=none", "eval_base": "eval=none", "lm_eval": "eval.lm_eval.tasks=[]",
       "merge": "merge=none", "export": "deploy.formats=[adapter]", "gguf": "deploy=local",
       "deploy": "deploy=local", "dpo": "train=sft", "orpo": "train=sft", "simpo": "train=sft",
       "kto": "train=sft", "grpo": "train=sft"}


def stage_fixes(stage: str, model: dict, lora: dict | None, quant: dict, train: dict,
                hardware: dict, inputs: dict[str, Any], distributed: dict | None = None,
                presets: dict[str, dict] | None = None, limit: int = 6, *,
                catalog: fixes.Catalog) -> list[dict[str, Any]]:
    """Returns overrides that make one stage fit, each with that stage's estimate, fitting first.

    sft: ``fixes.suggest_fixes``. The others: their own knobs (``STEPS``) alone, then together,
    quant=nf4 for a stage on the GPU, smaller models of the same family, and the stage's off
    switch (``OFF``, estimate 0). The options they name come from `catalog` (``fixes.Catalog``).

    Returns:
        [{"override", "stage", "total_gb", "fits", "changes"}, ...]; total_gb is the stage's
        peak where its model sits (device, or host for a host stage).
    """
    if stage == "sft":
        return [{**f, "stage": "sft"} for f in fixes.suggest_fixes(
            model, lora, quant, train, hardware, presets=presets, limit=limit,
            distributed=distributed, catalog=catalog)]
    args = {"model": model, "lora": lora, "quant": quant, "train": train, "hardware": hardware,
            "inputs": inputs, "distributed": distributed}
    start = _Candidate(stage, args, [])
    steps = STEPS.get(stage)
    tried = [c for c in (steps(start, hardware) if steps else ()) if c]
    chain, n = start, len(tried)
    for i in range(n):  # the same knobs together, each from where the last left off
        if _fits(chain.gb(), hardware):
            break
        cands = list(steps(chain, hardware)) if steps else []
        if i < len(cands) and cands[i]:
            chain = cands[i]
            tried.append(chain)
    cuda = hardware.get("device") == "cuda"
    if cuda and stage not in HOST_STAGES and (quant or {}).get("type") != "nf4":
        tried.append(start.with_("quant=nf4", quant={**fixes.option(catalog, "quant", "nf4"),
                                                     "compute_dtype": quant.get("compute_dtype")}))
    if presets is None:
        presets = fixes.model_presets(catalog)
    smaller = sorted(((n, m) for n, m in presets.items()
                      if m.get("family") == model.get("family") and m["params"] < model["params"]),
                     key=lambda nm: -nm[1]["params"])
    for name, m in smaller:
        cand = start.with_(f"model={name}", model={**m, "name": name})
        tried.append(cand)
        if _fits(cand.gb(), hardware):
            break
    out, seen = [], set()
    for c in tried:
        key = " ".join(c.overrides)
        if not key or key in seen:
            continue
        seen.add(key)
        gb = c.gb()
        out.append({"override": key, "stage": stage, "total_gb": round(max(gb), 1),
                    "fits": _fits(gb, hardware), "changes": len(c.overrides)})
    fitting = sorted((f for f in out if f["fits"]), key=lambda f: (f["changes"], -f["total_gb"]))
    rest = sorted((f for f in out if not f["fits"]), key=lambda f: f["total_gb"])
    off = {"override": OFF[stage], "stage": stage, "total_gb": 0.0, "fits": True,
           "changes": 1} if stage in OFF else None
    return [*fitting, *rest][:limit - 1] + ([off] if off else [])
