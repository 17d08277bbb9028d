"""Compiles a validated config into a Plan. Pure and fast: no torch, no file writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops import __version__
from llmops.backends import resolve_backend
from llmops.compiler.align import add_dpo as _add_dpo
from llmops.compiler.align import add_lm_eval as _add_lm_eval
from llmops.compiler.align import add_merge as _add_merge
from llmops.compiler.align import preference_params as _preference_params
from llmops.compiler.deploy import add_serving as _add_serving
from llmops.compiler.fingerprint import file_sha256, fingerprint
from llmops.compiler.plan import Plan, StageSpec
from llmops.config.schema import AppConfig
from llmops.env import Environment


def resolve_hardware(cfg: AppConfig, env: Environment) -> dict[str, Any]:
    """Returns the hardware profile with 'auto' replaced by what this machine has."""
    hw = cfg.hardware.model_dump()
    if hw["device"] == "auto":
        if env.cuda:
            gpu = env.gpus[0]
            hw.update(device="cuda", gpu_name=gpu.name, gpu_memory_gb=gpu.memory_gb,
                      num_gpus=len(env.gpus))
        else:
            hw.update(device="cpu", num_gpus=0, bf16=False)
    hw.setdefault("cpu_count", env.cpu_count)
    hw["cpu_count"] = env.cpu_count
    hw["memory_gb"] = env.memory_gb
    return hw


def _precision(cfg: AppConfig, hw: dict[str, Any]) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if hw["device"] != "cuda":
        return "fp32"
    return "bf16" if hw.get("bf16") else "fp16"


def _compute_dtype(cfg: AppConfig, precision: str) -> str:
    if cfg.quant.compute_dtype != "auto":
        return cfg.quant.compute_dtype
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def _model_params(cfg: AppConfig) -> dict[str, Any]:
    m = cfg.model
    return {
        "name": m.name, "hub_id": m.hub_id, "chat_template": m.chat_template,
        "trust_remote_code": m.trust_remote_code,
    }


class _Builder:
    """Accumulates stages in dependency order and fingerprints each as it is added."""

    def __init__(self) -> None:
        self.stages: list[StageSpec] = []

    def add(self, kind: str, params: dict[str, Any], needs: list[str], summary: str,
            input_files: dict[str, str] | None = None) -> None:
        fps = {s.name: s.fingerprint for s in self.stages}
        upstream = {n: fps[n] for n in needs}
        files = input_files or {}
        fp = fingerprint(kind, params, upstream, files, __version__)
        self.stages.append(StageSpec(kind, kind, params, tuple(needs), fp, files, summary))

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)


def compile_plan(cfg: AppConfig, env: Environment) -> Plan:
    """Compiles a validated config into a Plan of stages with params and fingerprints.

    Args:
        cfg: The validated configuration.
        env: Facts about this machine (GPUs, installed packages).

    Returns:
        The plan, in dependency order.
    """
    hw = resolve_hardware(cfg, env)
    device = hw["device"]
    backend = resolve_backend(cfg.train.backend, device == "cuda" and env.cuda)
    precision = _precision(cfg, hw)
    model = _model_params(cfg)
    quant = {**cfg.quant.model_dump(), "compute_dtype": _compute_dtype(cfg, precision)}
    lora = cfg.lora.model_dump(exclude={"enabled"}) if cfg.lora.enabled else None
    b = _Builder()
    base = ["base"] if cfg.model.source == "tiny" else []
    train = cfg.train.model_dump(exclude={"method", "dpo"})
    train.update(backend=backend, precision=precision)
    if cfg.train.method != "none":
        from llmops.planning.rules import resolved_train

        planned = resolved_train(cfg, hw)
        train.update(batch_size=planned["batch_size"], grad_accum=planned["grad_accum"])
    d = cfg.data

    if cfg.usecase.enabled:
        b.add("decide", {"usecase": cfg.usecase.model_dump(),
                         "model": cfg.model.model_dump(exclude={"pretrain"}), "train": train,
                         "hardware": hw}, [],
              f"go/no-go for '{cfg.usecase.name}': criteria, red flags, method, ROI"
              f"{'' if cfg.usecase.enforce else ' (not enforced)'}")
    if cfg.train.method != "none":
        n_train = (round(d.n_examples * (1 - d.val_fraction - d.test_fraction))
                   if d.source == "task_api" else None)
        b.add("compute", {"model": cfg.model.model_dump(exclude={"pretrain"}), "lora": lora,
                          "quant": quant, "train": train, "hardware": hw,
                          "data": {"n_train_rows": n_train, "avg_tokens": None}}, [],
              f"memory by part, fit on {hw['name']}, step time and cost")

    if cfg.model.source == "tiny":
        m = cfg.model
        assert m.pretrain is not None  # guaranteed by rules._model
        arch = {
            "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
            "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_kv_heads, "max_position_embeddings": m.context_length,
            "vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings,
        }
        pretrain = {**m.pretrain.model_dump(), "seed": cfg.seed}
        b.add("base", {"arch": arch, "pretrain": pretrain}, [],
              f"build + pre-train tiny Llama ({m.num_layers}L, d={m.hidden_size}, "
              f"{m.pretrain.steps} steps)")

    files: dict[str, str] = {}
    path = None
    if d.source == "jsonl" and d.path:
        p = Path(d.path).expanduser().resolve()
        path = str(p)
        files[path] = file_sha256(p)
    data_params = {
        "source": d.source, "path": path, "format": d.format, "hf_id": d.hf_id,
        "hf_split": d.hf_split, "system_prompt": d.system_prompt, "n_examples": d.n_examples,
        "val_fraction": d.val_fraction, "test_fraction": d.test_fraction, "seed": d.seed,
        "dedup": d.dedup, "max_length": d.max_length, "model": model,
    }
    if cfg.train.method in ("dpo", "sft_dpo"):  # only then: the SFT-only data fingerprint stays
        data_params.update(_preference_params(d, files))
    what = {"task_api": f"Task-API x{d.n_examples}", "jsonl": path, "hf": d.hf_id}[d.source]
    train_share = 1 - d.val_fraction - d.test_fraction
    shares = f"{train_share:.0%}/{d.val_fraction:.0%}/{d.test_fraction:.0%}"
    b.add("data", data_params, list(base), f"{what} -> train/val/test ({shares})", files)

    t = cfg.train
    if t.method in ("sft", "sft_dpo"):
        sft = {"model": model, "lora": lora, "quant": quant, "train": train}
        adapter = f"LoRA r{cfg.lora.r}" if lora else "full fine-tune"
        qtxt = f" on {cfg.quant.type}" if cfg.quant.type != "none" else ""
        steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
        b.add("sft", sft, ["data", *base],
              f"{adapter}{qtxt}, lr {t.learning_rate:g}, {steps}, batch {train['batch_size']}x"
              f"{train['grad_accum']}, {backend} on {device}")
    if t.method in ("dpo", "sft_dpo"):
        _add_dpo(b, cfg, model, lora, quant, train, base)
    if cfg.merge.method != "none":
        _add_merge(b, cfg, model, base)
    tuned = next((n for n in ("merge", "dpo", "sft") if b.has(n)), None)

    e = cfg.eval
    if e.enabled:
        ev = {"model": model, "quant": quant, "max_new_tokens": e.max_new_tokens,
              "batch_size": e.batch_size, "limit": e.limit}
        b.add("eval_base", ev, ["data", *base], f"base model on the test split"
              f"{f' (first {e.limit})' if e.limit else ''}")
        if e.lm_eval.tasks:
            _add_lm_eval(b, cfg, model, tuned, base)
        if tuned:
            gates = {k: g.model_dump(exclude_none=True) for k, g in e.gates.items()}
            b.add("eval", {**ev, "gates": gates, "enforce": e.enforce},
                  ["data", tuned, "eval_base", *base],
                  f"tuned vs base; gates: {', '.join(gates) or 'none'}"
                  f"{'' if e.enforce else ' (not enforced)'}")

    dp = cfg.deploy
    if dp.target != "none" and tuned:
        needs = [tuned, *(["eval"] if b.has("eval") else []), *base]
        formats = [f for f in dp.formats if lora or f != "adapter"]
        b.add("export", {"model": model, "formats": formats,
                         "merge_dtype": dp.merge_dtype}, needs, ", ".join(formats))
        _add_serving(b, cfg, model, base)

    run = {
        "device": device, "backend": backend, "precision": precision, "seed": cfg.seed,
        "store_dir": str(Path(cfg.store_dir).expanduser().resolve()),
        "store_verify": cfg.store.verify,
        "progress": cfg.progress, "dry_run": cfg.dry_run, "hardware": hw,
    }
    return Plan(stages=tuple(b.stages), run=run, config=cfg.model_dump(), version=__version__)
