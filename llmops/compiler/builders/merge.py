"""The merge stage's params and builder: adapters merged into a full-precision model. Pure.

The stage's inputs are the stages named in its adapters and "base" for the tiny model; it writes
model/ (merged, float32 base), adapter/ (combined) and merge_report.json {artifact: "model",
parity, note}.
"""

from pathlib import Path

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import ModelParams, adapter_files
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.plan import AFTER_SFT_STAGES, TRAINING_STAGES


class StageAdapter(TypedDict):
    stage: str
    """A training stage of the plan (sft, dpo, orpo, simpo)."""


class FolderAdapter(TypedDict):
    path: str
    """An absolute adapter folder (its files are hashed into the fingerprint)."""


class MergeParams(TypedDict):
    """Params of the merge stage (merge set)."""

    model: ModelParams
    method: str
    """linear, cat, ties, dare_linear, dare_ties or svd (peft add_weighted_adapter's)."""
    adapters: list[StageAdapter | FolderAdapter]
    """merge.adapters; empty there: the trained adapter (sft and dpo both, for every method but
    linear, when both ran)."""
    weights: list[float]
    """One per adapter (merge.weights; empty there: 1.0 each)."""
    density: float
    majority_sign_method: str
    dtype: str
    """Dtype of the saved merged weights (the merge runs in float32)."""
    quant_trained: str
    """quant.type the adapters were trained on."""
    parity_tolerance: NotRequired[float]
    """Not compiled from any option: when set, the reload parity tolerance in place of dtype's
    default."""


def add_merge(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the merge stage (merge set): the listed adapters (default: the trained one) into the
    base."""
    m = s.cfg.merge
    if m.method == "none":
        return
    names = list(m.adapters)
    if not names:  # the trained adapter; TIES/DARE/cat/svd combine sft and the preference
        # stage's (dpo, orpo, simpo) when both exist
        pref = next((k for k in AFTER_SFT_STAGES if b.has(k)), None)
        both = b.has("sft") and pref is not None and m.method not in ("linear",)
        names = ["sft", pref] if both and pref else [b.tuned()]
    adapters: list[StageAdapter | FolderAdapter] = []
    needs, files = [], {}
    for name in names:
        if name in TRAINING_STAGES:
            adapters.append({"stage": name})
            needs.append(name)
        else:
            path = str(Path(name).expanduser().resolve())
            adapters.append({"path": path})
            files.update(adapter_files(path))
    weights = list(m.weights) or [1.0] * len(adapters)
    params: MergeParams = {
        "model": s.model, "method": m.method, "adapters": adapters, "weights": weights,
        "density": m.density, "majority_sign_method": m.majority_sign_method,
        "dtype": m.dtype, "quant_trained": s.cfg.quant.type}
    what = " + ".join(f"{w:g}*{n}" for w, n in zip(weights, names, strict=True))
    b.add("merge", params, [*dict.fromkeys(needs), *s.base],
          f"{m.method}: {what} into a {m.dtype} base", files)
