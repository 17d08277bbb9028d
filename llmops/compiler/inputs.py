"""What every stage builder starts from: the shared params of a plan (`StageInputs`) and the plan
being built (`PlanBuilder`). Pure: no torch, no writes.

``llmops.compiler.compile.compile_plan`` builds one `StageInputs` per plan and hands it, with one
`PlanBuilder`, to each stage kind's builder (``llmops.compiler.builders.<kind>.add_<kind>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from llmops import __version__
from llmops.compiler.builders.common import (
    ApiModelParams,
    DistributedParams,
    HardwareParams,
    LoraParams,
    ModelFacts,
    ModelParams,
    QuantParams,
    TrainParams,
)
from llmops.config.templates import is_path
from llmops.core.fingerprint import data_file_hash, fingerprint
from llmops.core.plan import TUNED_STAGES, StageSpec, recipe

if TYPE_CHECKING:  # annotations only: a stage process that imports a builder's params type
    # (llmops.stages.<kind>) has no use for the config schema (pydantic, ~0.25 CPU-s to import)
    from llmops.config.resolve import Resolved
    from llmops.config.schema import AppConfig

#: Files of a model folder hashed by content; weights (large) are fingerprinted by name, size and
#: modification time, which changes when a folder is retrained or replaced in place.
_SMALL_FILE = 8 << 20

P = TypeVar("P", bound=Mapping[str, Any])


def folder_hash(folder: Path) -> str:
    """Returns an xxh3-128 digest of a local model folder: small files (config, tokenizer,
    template) by content, large ones (weights) by relative path, size and mtime."""
    import xxhash

    h = xxhash.xxh3_128()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}\0{stat.st_size}\0".encode())
        h.update(data_file_hash(path).encode() if stat.st_size <= _SMALL_FILE
                 else str(stat.st_mtime_ns).encode())
    return f"xxh3_128:{h.hexdigest()}"


@dataclass(frozen=True)
class StageInputs:
    """The params several stages share, built once per plan from the config and its resolution.

    Attributes:
        cfg: The validated config.
        resolved: Its resolved "auto" values.
        model: The model as stages load it (name, hub_id, chat_template, trust_remote_code).
        facts: The model's architecture facts, for the planners (decide, compute).
        lora: The LoRA params, or None for a full fine-tune.
        quant: The quant params, compute_dtype resolved.
        train: The train params, backend, precision and (when training) the batch resolved.
        hardware: The resolved hardware profile.
        distributed: The resolved distributed group for the training stages (sft, dpo), or None
            for one process (distributed=none: absent from their params, so the fingerprints of
            one-process plans stay those of llmops 0.2.0).
        base: ["base"] for the tiny model (every stage that loads the model needs it), else [].
    """

    cfg: AppConfig
    resolved: Resolved
    model: ModelParams
    facts: ModelFacts
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    hardware: HardwareParams
    distributed: DistributedParams | None
    base: list[str]

    @classmethod
    def of(cls, cfg: AppConfig, r: Resolved) -> StageInputs:
        """Builds the shared params of cfg's stages from its resolution r."""
        m = cfg.model
        train = cfg.train.model_dump(exclude={"method", "dpo", "orpo", "simpo", "kto", "grpo",
                                              "openai"})
        train.update(backend=r.backend, precision=r.precision)
        if cfg.train.method != "none":
            train.update(batch_size=r.batch_size, grad_accum=r.grad_accum)
        model: ModelParams = {"name": m.name, "hub_id": m.hub_id,
                              "chat_template": m.chat_template,
                              "trust_remote_code": m.trust_remote_code}
        if is_path(m.chat_template):
            # A template file is read when a stage runs: its content is part of the fingerprint,
            # so editing the file rebuilds what was trained and served with it.
            path = Path(m.chat_template).expanduser().resolve()
            model.update(chat_template=str(path),
                         chat_template_hash=data_file_hash(path))
        if m.source == "hub" and m.hub_id and Path(m.hub_id).expanduser().is_dir():
            # A local model folder can be retrained or replaced in place: its files are part of
            # the fingerprint, so no stage reuses what was built from the folder's old content.
            folder = Path(m.hub_id).expanduser().resolve()
            model.update(hub_id=str(folder), hub_folder_hash=folder_hash(folder))
        return cls(
            cfg=cfg, resolved=r, model=model,
            facts=cast(ModelFacts, m.model_dump(exclude={"pretrain", "recommended_max_length"})),
            lora=cast(LoraParams, cfg.lora.model_dump(exclude={"enabled"}))
            if cfg.lora.enabled else None,
            quant=cast(QuantParams, {**cfg.quant.model_dump(), "compute_dtype": r.compute_dtype}),
            train=cast(TrainParams, train), hardware=cast(HardwareParams, dict(r.hardware)),
            distributed=cast(DistributedParams, dict(r.distributed))
            if cfg.distributed.strategy != "none" else None,
            base=["base"] if m.source == "tiny" else [],
        )

    def training(self, params: P) -> P:
        """Returns a training (or compute) stage's params with the distributed group added when
        one is set."""
        return cast(P, {**params, "distributed": self.distributed}) if self.distributed \
            else params


class PlanBuilder:
    """Accumulates stages in dependency order and fingerprints each as it is added."""

    def __init__(self) -> None:
        self.stages: list[StageSpec] = []

    def add(self, kind: str, params: Mapping[str, Any], needs: list[str], summary: str,
            input_files: dict[str, str] | None = None) -> None:
        """Adds a stage; its fingerprint covers its needs' fingerprints and its input files.

        Args:
            kind: The stage kind (a row of the stage table).
            params: The stage's params, of its kind's type (``<Kind>Params`` in
                ``llmops.compiler.builders.<kind>``).
            needs: The stages whose outputs it reads.
            summary: Its line in the plan table.
            input_files: Files it reads from outside the store, path -> content hash.
        """
        fps = {s.name: s.fingerprint for s in self.stages}
        upstream = {n: fps[n] for n in needs}
        files = input_files or {}
        plain = dict(params)
        fp = fingerprint(kind, plain, upstream, files, __version__, recipe(kind))
        self.stages.append(StageSpec(kind, kind, plain, tuple(needs), fp, files, summary))

    def has(self, name: str) -> bool:
        """Tells whether the plan has a stage of this name yet."""
        return any(s.name == name for s in self.stages)

    def tuned(self) -> str | None:
        """Returns the stage whose model eval and export read (merge, else dpo, else sft)."""
        return next((n for n in TUNED_STAGES if self.has(n)), None)


def api_model(s: StageInputs) -> ApiModelParams | None:
    """Returns the API model of a train.backend=openai plan, else None."""
    if s.resolved.backend != "openai":
        return None
    o = s.cfg.train.openai
    return {"model": o.model, "base_url": o.base_url}
