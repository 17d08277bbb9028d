"""Compiles a validated config and its resolution into a Plan. Pure and fast: no torch, no writes.

``compile_plan`` runs one builder per stage kind, in the stage table's order
(``llmops.core.plan.STAGE_ORDER``); each adds its stage when the config asks for it. Builders
read the config and the `Resolved` values; none of them resolves an "auto" itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops import __version__
from llmops.compiler import align, deploy, monitor, release
from llmops.compiler.render import gates_summary, known_kinds
from llmops.config.schema import AppConfig, DataConfig, DataSource
from llmops.config.templates import is_path
from llmops.core.fingerprint import data_file_hash, fingerprint
from llmops.core.plan import STAGE_ORDER, TUNED_STAGES, Plan, StageSpec, recipe
from llmops.data import formats
from llmops.data.limits import DATA_KEYS as DATA_LIMITS
from llmops.config.resolve import Resolved
from llmops.config.resolve import stage_inputs
from llmops.scoring.gates import choose_gates

#: Files of a model folder hashed by content; weights (large) are fingerprinted by name, size and
#: modification time, which changes when a folder is retrained or replaced in place.
_SMALL_FILE = 8 << 20


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
    model: dict[str, Any]
    facts: dict[str, Any]
    lora: dict[str, Any] | None
    quant: dict[str, Any]
    train: dict[str, Any]
    hardware: dict[str, Any]
    distributed: dict[str, Any] | None
    base: list[str]

    @classmethod
    def of(cls, cfg: AppConfig, r: Resolved) -> StageInputs:
        """Builds the shared params of cfg's stages from its resolution r."""
        m = cfg.model
        train = cfg.train.model_dump(exclude={"method", "dpo"})
        train.update(backend=r.backend, precision=r.precision)
        if cfg.train.method != "none":
            train.update(batch_size=r.batch_size, grad_accum=r.grad_accum)
        model = {"name": m.name, "hub_id": m.hub_id, "chat_template": m.chat_template,
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
            facts=m.model_dump(exclude={"pretrain", "recommended_max_length"}),
            lora=cfg.lora.model_dump(exclude={"enabled"}) if cfg.lora.enabled else None,
            quant={**cfg.quant.model_dump(), "compute_dtype": r.compute_dtype},
            train=train, hardware=dict(r.hardware),
            distributed=dict(r.distributed) if cfg.distributed.strategy != "none" else None,
            base=["base"] if m.source == "tiny" else [],
        )

    def training(self, params: dict[str, Any]) -> dict[str, Any]:
        """Returns a training (or compute) stage's params with the distributed group added when
        one is set."""
        return {**params, "distributed": self.distributed} if self.distributed else params


class PlanBuilder:
    """Accumulates stages in dependency order and fingerprints each as it is added."""

    def __init__(self) -> None:
        self.stages: list[StageSpec] = []

    def add(self, kind: str, params: dict[str, Any], needs: list[str], summary: str,
            input_files: dict[str, str] | None = None) -> None:
        """Adds a stage; its fingerprint covers its needs' fingerprints and its input files."""
        fps = {s.name: s.fingerprint for s in self.stages}
        upstream = {n: fps[n] for n in needs}
        files = input_files or {}
        fp = fingerprint(kind, params, upstream, files, __version__, recipe(kind))
        self.stages.append(StageSpec(kind, kind, params, tuple(needs), fp, files, summary))

    def has(self, name: str) -> bool:
        """Tells whether the plan has a stage of this name yet."""
        return any(s.name == name for s in self.stages)

    def tuned(self) -> str | None:
        """Returns the stage whose model eval and export read (merge, else dpo, else sft)."""
        return next((n for n in TUNED_STAGES if self.has(n)), None)


def add_decide(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the decide stage (usecase enabled): the go/no-go assessment."""
    u = s.cfg.usecase
    if not u.enabled:
        return
    b.add("decide", {"usecase": u.model_dump(), "model": s.facts, "train": s.train,
                     "hardware": s.hardware}, [],
          f"go/no-go for '{u.name}': criteria, red flags, method, ROI"
          f"{'' if u.enforce else ' (not enforced)'}")


def add_compute(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the compute stage (something trains): memory, time and cost of the training step, and
    the memory plan of every stage that loads a model."""
    if s.cfg.train.method == "none":
        return
    d = s.cfg.data
    n_train = (round(d.n_examples * (1 - d.val_fraction - d.test_fraction))
               if d.source == "task_api" else None)
    data = {"n_train_rows": n_train, "avg_tokens": None}
    params = {"model": s.facts, "lora": s.lora, "quant": s.quant, "train": s.train,
              "hardware": s.hardware, "data": data, "stages": stage_inputs(s.cfg)}
    if s.resolved.facts_from:  # only then: a preset's fingerprint (the store key) stays as it was
        params["facts_from"] = dict(s.resolved.facts_from)
    b.add("compute", s.training(params), [],
          f"memory by part, fit on {s.hardware['name']}, step time and cost"
          f"{_procs_text(s.distributed)}")


def add_base(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the base stage (model=tiny): builds and pre-trains the tiny model."""
    m = s.cfg.model
    if m.source != "tiny":
        return
    assert m.pretrain is not None  # guaranteed by config/rules/model.py
    arch = {
        "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_kv_heads, "max_position_embeddings": m.context_length,
        "vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings,
    }
    pretrain = {**m.pretrain.model_dump(), "seed": s.cfg.seed}
    b.add("base", {"arch": arch, "pretrain": pretrain}, [],
          f"build + pre-train tiny Llama ({m.num_layers}L, d={m.hidden_size}, "
          f"{m.pretrain.steps} steps)")


def data_sources(d: DataConfig) -> list[dict[str, Any]]:
    """Returns the sources of a files config as the data stage reads them: ``data.path`` as a
    one-source list, paths made absolute, aliases resolved, only the mappings set."""
    given = [DataSource(path=d.path, format=d.format, columns=d.columns, tags=d.tags)] if d.path \
        else list(d.sources)
    out = []
    for src in given:
        out.append({
            "path": str(Path(src.path).expanduser().resolve()),
            "format": formats.reader_format(src.format), "weight": src.weight,
            "samples": src.samples, "columns": src.columns.model_dump(exclude_none=True),
            "tags": src.tags.model_dump(exclude_none=True),
        })
    return out


def add_data(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the data stage: rows to checked train/val/test splits (+ preference pairs for DPO).

    Every file of every source (a dataset folder's files included) is hashed into the stage's
    fingerprint, so editing any of them prepares the data again.
    """
    d = s.cfg.data
    files: dict[str, str] = {}
    sources = data_sources(d) if d.source in ("files", "jsonl") else []
    for src in sources:
        for f in formats.files_of(formats.input_paths(src["path"])):
            files[str(f)] = data_file_hash(f)
    params = {
        "source": "files" if sources else d.source, "sources": sources,
        "format": formats.reader_format(d.format), "columns": d.columns.model_dump(
            exclude_none=True), "tags": d.tags.model_dump(exclude_none=True),
        "hf_id": d.hf_id, "hf_split": d.hf_split, "system_prompt": d.system_prompt,
        "n_examples": d.n_examples, "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction, "seed": d.seed, "dedup": d.dedup,
        "max_length": d.max_length, "on_error": d.on_error, "num_proc": d.num_proc,
        "model": s.model, "limits": {k: getattr(s.cfg.limits, k) for k in DATA_LIMITS},
        # the preview shows the rows as sft tokenizes them, its loss mask included
        "preview": {"rows": d.preview, "assistant_only_loss": s.cfg.train.assistant_only_loss},
    }
    if s.cfg.train.method in ("dpo", "sft_dpo"):  # only then: the SFT-only data fingerprint stays
        params.update(align.preference_params(d, files))
    if d.source == "task_api":
        what = f"Task-API x{d.n_examples}"
    elif d.source == "hf":
        what = f"{d.hf_id}[{d.hf_split}]"
    else:
        what = " + ".join(_source_text(src) for src in sources)
    train_share = 1 - d.val_fraction - d.test_fraction
    shares = f"{train_share:.0%}/{d.val_fraction:.0%}/{d.test_fraction:.0%}"
    checks = "on_error=fail" if d.on_error == "fail" else "rejects reported"
    b.add("data", params, list(s.base),
          f"{what} -> checked ({checks}) -> train/val/test ({shares})", files)


def _source_text(src: dict[str, Any]) -> str:
    share = (f" x{src['samples']} rows" if src["samples"] is not None else
             f" weight {src['weight']:g}" if src["weight"] is not None else "")
    fmt = "" if src["format"] == "auto" else f" ({src['format']})"
    return f"{Path(src['path']).name}{fmt}{share}"


def add_sft(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the sft stage (train=sft, sft_dpo): LoRA, QLoRA or full fine-tuning."""
    t, cfg = s.cfg.train, s.cfg
    if t.method not in ("sft", "sft_dpo"):
        return
    adapter = f"LoRA r{cfg.lora.r}" if s.lora else "full fine-tune"
    qtxt = f" on {cfg.quant.type}" if cfg.quant.type != "none" else ""
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    b.add("sft", s.training({"model": s.model, "lora": s.lora, "quant": s.quant,
                             "train": s.train}),
          ["data", *s.base],
          f"{adapter}{qtxt}, lr {t.learning_rate:g}, {steps}, batch {s.train['batch_size']}x"
          f"{s.train['grad_accum']}, {s.resolved.backend} on {s.resolved.device}"
          f"{_procs_text(s.distributed)}")


def _procs_text(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    nodes = f" x {d['nnodes']} nodes" if d["nnodes"] > 1 else ""
    return f", {d['name']} x {d['nproc_per_node']} procs{nodes} ({d['launcher']}, {d['backend']})"


def _eval_params(s: StageInputs) -> dict[str, Any]:
    e = s.cfg.eval
    return {"model": s.model, "quant": s.quant, "max_new_tokens": e.max_new_tokens,
            "batch_size": e.batch_size, "token_budget": e.token_budget,
            "logits_mb": e.logits_mb, "limit": e.limit, "worst_examples": e.worst_examples}


def add_eval_base(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the eval_base stage (eval enabled): the base model on the test split, once per base."""
    e = s.cfg.eval
    if not e.enabled:
        return
    b.add("eval_base", _eval_params(s), ["data", *s.base], f"base model on the test split"
          f"{f' (first {e.limit})' if e.limit else ''}")


def add_eval(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the eval stage (eval enabled, a tuned model): tuned vs base, and the gates.

    The gates are resolved here (``choose_gates``): auto or the user's, with the primary
    threshold from the use case's quality target when it sets one.
    """
    e, tuned = s.cfg.eval, b.tuned()
    if not e.enabled or not tuned:
        return
    given = e.gates if isinstance(e.gates, str) else {
        k: g.model_dump(exclude_none=True) for k, g in e.gates.items()}
    target = s.cfg.usecase.target_error_rate if s.cfg.usecase.enabled else None
    mode, gates = choose_gates(given, e.auto.model_dump(), target)
    b.add("eval", {**_eval_params(s), "gates": gates, "gate_mode": mode,
                   "confidence": e.confidence, "enforce": e.enforce},
          ["data", tuned, "eval_base", *s.base],
          f"tuned vs base; gates: {gates_summary(mode, gates, known_kinds(s.cfg.data.source))}"
          f"{'' if e.enforce else ' (not enforced)'}")


def add_export(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the export stage (deploy target set, a tuned model): adapter and/or merged model."""
    dp, tuned = s.cfg.deploy, b.tuned()
    if dp.target == "none" or not tuned:
        return
    needs = [tuned, *(["eval"] if b.has("eval") else []), *s.base]
    formats = [f for f in dp.formats if s.lora or f != "adapter"]
    b.add("export", {"model": s.model, "formats": formats, "merge_dtype": dp.merge_dtype}, needs,
          ", ".join(formats))


# One builder per stage kind; compile_plan runs them in the stage table's order.
BUILDERS: dict[str, Callable[[PlanBuilder, StageInputs], None]] = {
    "decide": add_decide, "compute": add_compute, "base": add_base, "data": add_data,
    "sft": add_sft, "dpo": align.add_dpo, "merge": align.add_merge, "eval_base": add_eval_base,
    "lm_eval": align.add_lm_eval, "eval": add_eval, "export": add_export,
    "gguf": deploy.add_gguf, "deploy": deploy.add_deploy, "monitor": monitor.add_monitor,
    "release": release.add_release,
}


def compile_plan(cfg: AppConfig, resolved: Resolved) -> Plan:
    """Compiles a validated config into a Plan of stages with params and fingerprints.

    Args:
        cfg: The validated configuration.
        resolved: Its "auto" values, resolved once (``llmops.config.resolve.resolve``; the
            config rules saw the same object).

    Returns:
        The plan, in dependency order.
    """
    s = StageInputs.of(cfg, resolved)
    b = PlanBuilder()
    for kind in STAGE_ORDER:
        BUILDERS[kind](b, s)
    run = {
        "device": resolved.device, "backend": resolved.backend, "precision": resolved.precision,
        "threads": resolved.threads, "seed": cfg.seed,
        "store_dir": str(Path(cfg.store_dir).expanduser().resolve()),
        "store_verify": cfg.store.verify,
        "progress": cfg.progress, "dry_run": cfg.dry_run, "hardware": s.hardware,
    }
    return Plan(stages=tuple(b.stages), run=run, config=cfg.model_dump(), version=__version__)
