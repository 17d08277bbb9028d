"""Concrete config overrides that make an infeasible training plan fit, each with its own estimate.

Pure: reads the model presets' YAML with OmegaConf, imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.planning.memory import USABLE_FRACTION, estimate, total_gb

MIN_LENGTH = 256


def _load(path: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _conf_dir() -> Path:
    """Returns the folder of the config groups: the package llmops.conf, as
    ``llmops.config.hydra.compose.conf_dir`` finds it (planning sits below config, so it asks the
    package itself)."""
    import llmops.conf

    return Path(llmops.conf.__file__).parent


def model_presets() -> dict[str, dict[str, Any]]:
    """Returns the hub model presets of conf/model by name (architecture facts only).

    model=hub, whose facts are read from a config.json at validation, is no preset.
    """
    out = {}
    for path in sorted((_conf_dir() / "model").glob("*.yaml")):
        data = _load(path)
        if isinstance(data, dict) and data.get("source") == "hub" and data.get("params"):
            out[path.stem] = data
    return out


def option(group: str, name: str) -> dict[str, Any]:
    """Returns the option file conf/<group>/<name>.yaml, the one a fix's override names."""
    data = _load(_conf_dir() / group / f"{name}.yaml")
    data.pop("enabled", None)  # lora: the planner's adapter dict has no switch
    return data


def _usable(hardware: dict[str, Any]) -> float | None:
    cap = hardware.get("gpu_memory_gb") if hardware.get("device") == "cuda" \
        else hardware.get("memory_gb")
    return float(cap) * USABLE_FRACTION if cap else None


class _Plan:
    """One candidate configuration and the overrides that lead to it."""

    def __init__(self, model: dict, lora: dict | None, quant: dict, train: dict,
                 overrides: list[str], distributed: dict | None = None):
        self.model, self.lora, self.quant, self.train = model, lora, quant, dict(train)
        self.overrides = overrides
        self.distributed = distributed

    def gb(self, hardware: dict) -> float:
        return total_gb(self.model, self.lora, self.quant, self.train, hardware,
                        self.distributed)

    def with_(self, override: str, **kw: Any) -> _Plan:
        p = _Plan(kw.get("model", self.model), kw.get("lora", self.lora),
                  kw.get("quant", self.quant), {**self.train, **kw.get("train", {})},
                  [*self.overrides, override], self.distributed)
        return p


def _qlora(p: _Plan) -> _Plan | None:
    if (p.quant or {}).get("type") == "nf4":
        return None
    nf4 = option("quant", "nf4")
    if p.lora:
        return p.with_("quant=nf4", quant=nf4)
    return p.with_("quant=nf4 lora=r16", quant=nf4, lora=option("lora", "r16"))


def _checkpointing(p: _Plan) -> _Plan | None:
    if p.train.get("gradient_checkpointing"):
        return None
    return p.with_("train.gradient_checkpointing=true", train={"gradient_checkpointing": True})


def _smaller_batch(p: _Plan, hardware: dict, usable: float) -> _Plan | None:
    b, ga = int(p.train["batch_size"]), int(p.train["grad_accum"])
    eff, last = b * ga, None
    while b > 1:
        b //= 2
        last = p.with_(f"train.batch_size={b} train.grad_accum={max(1, eff // b)}",
                       train={"batch_size": b, "grad_accum": max(1, eff // b)})
        if last.gb(hardware) <= usable:
            return last
    return last


def _shorter(p: _Plan, hardware: dict, usable: float) -> _Plan | None:
    s, last = int(p.train["max_length"]), None
    while s // 2 >= MIN_LENGTH:
        s //= 2
        last = p.with_(f"train.max_length={s}", train={"max_length": s})
        if last.gb(hardware) <= usable:
            return last
    return last


def multi_gpu_profiles(hardware: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Returns the profiles that shard over several GPUs of this profile's GPU, fewest first.

    The profile itself comes first when it has several GPUs; then conf/hardware's multi-GPU
    profiles of the same GPU model (gpu_name).
    """
    out = []
    if int(hardware.get("num_gpus") or 0) > 1:
        out.append((str(hardware["name"]), hardware))
    from yaml import YAMLError

    try:
        paths = sorted((_conf_dir() / "hardware").glob("*.yaml"))
        profiles = [(p.stem, _load(p)) for p in paths]
    except (OSError, YAMLError):  # profiles are optional; the other fixes still stand
        profiles = []
    for name, prof in sorted(profiles, key=lambda np: int(np[1].get("num_gpus") or 0)):
        if (name != hardware.get("name") and int(prof.get("num_gpus") or 0) > 1
                and prof.get("gpu_name") == hardware.get("gpu_name")):
            out.append((name, prof))
    return out


def sharded_fix(p: _Plan, hardware: dict[str, Any]) -> dict[str, Any] | None:
    """Finds the fewest GPUs over which distributed=fsdp (full shard) makes the plan fit.

    Tried when each GPU holds a whole replica (one process, ddp): N = 2, 4, 8, ... GPUs of this
    profile, or of a multi-GPU profile of the same GPU.

    Returns:
        {"override", "total_gb" (per GPU), "fits": True, "changes": 1, "gpus": N}, or None.
    """
    from llmops.planning.distributed import resolve_distributed

    if p.distributed and p.distributed["strategy"] not in ("none", "ddp"):
        return None
    for name, prof in multi_gpu_profiles(hardware):
        usable = _usable({**prof, "device": "cuda"})
        n = 2
        while usable and n <= int(prof["num_gpus"]):
            fsdp = resolve_distributed({**option("distributed", "fsdp"), "nproc_per_node": n},
                                       {**prof, "device": "cuda"})
            gb = total_gb(p.model, p.lora, p.quant, p.train, {**hardware, **prof}, fsdp)
            if gb <= usable:
                words = ["distributed=fsdp"]
                if name != hardware.get("name"):
                    words.append(f"hardware={name}")
                if n != int(prof["num_gpus"]):
                    words.append(f"distributed.nproc_per_node={n}")
                return {"override": " ".join(words), "total_gb": round(gb, 1), "fits": True,
                        "changes": 1, "gpus": n}
            n *= 2
    return None


def scale_out(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
              n_train_rows: int | None = None, avg_tokens: int | None = None
              ) -> list[dict[str, Any]]:
    """Returns what one-process GPU plan would cost over all GPUs of the multi-GPU profiles of
    its GPU: with distributed=ddp (a replica per GPU: faster) and distributed=fsdp (sharded: less
    memory per GPU), each with its per-GPU memory, step time and run time.

    Returns:
        [{"override": "distributed=fsdp hardware=8xa100_40g", "gpus": 8, "per_gpu_gb": 6.1,
          "fits": True, "step_time_s": 0.2, "run_time_h": 0.01}, ...]; [] when the profile's GPU
        has no multi-GPU profile (or the plan is not for a GPU).
    """
    from llmops.planning.distributed import resolve_distributed

    if hardware.get("device") != "cuda":
        return []
    out = []
    for name, prof in multi_gpu_profiles(hardware):
        hw = {**hardware, **prof, "device": "cuda"}
        usable = _usable(hw)
        for strategy in ("ddp", "fsdp"):
            dist = resolve_distributed(option("distributed", strategy), hw)
            e = estimate(model, lora, quant, train, hw, n_train_rows=n_train_rows,
                         avg_tokens=avg_tokens, distributed=dist)
            words = [f"distributed={strategy}"] + (
                [f"hardware={name}"] if name != hardware.get("name") else [])
            out.append({"override": " ".join(words), "gpus": int(dist["world_size"]),
                        "per_gpu_gb": e["total_gb"],
                        "fits": usable is not None and e["total_gb"] <= usable,
                        "step_time_s": e.get("step_time_s"), "run_time_h": e.get("run_time_h")})
    return out


def suggest_fixes(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                  presets: dict[str, dict] | None = None, limit: int = 6,
                  distributed: dict | None = None) -> list[dict[str, Any]]:
    """Tries overrides that shrink the plan and returns them with their estimates, fitting first.

    Tried alone: quant=nf4 (with lora=r16 when there is no adapter), gradient checkpointing, a
    smaller batch with more accumulation (same effective batch), a shorter train.max_length.
    Then the same cumulatively (QLoRA, + checkpointing, + smaller batch, + shorter sequences), and
    smaller presets of the same family, as configured and with the cumulative fixes. When each
    GPU holds a whole replica, sharding with FSDP over the fewest GPUs that fit (``sharded_fix``)
    comes first among the fixes that fit: it trains the model exactly as configured.

    Args:
        model, lora, quant, train, hardware: As for ``memory.estimate``.
        distributed: The resolved distributed group, or None for one process.
        presets: Model presets by name (default: conf/model); for the smaller-model fixes.
        limit: The most fixes returned.

    Returns:
        [{"override": "quant=nf4 lora=r16", "total_gb": 9.8, "fits": True}, ...]
    """
    usable = _usable(hardware)
    if usable is None:
        return []
    start = _Plan(model, lora, quant, train, [], distributed)
    tried: list[_Plan] = []
    for step in (_qlora, _checkpointing):
        cand = step(start)
        if cand:
            tried.append(cand)
    for step2 in (_smaller_batch, _shorter):
        cand = step2(start, hardware, usable)
        if cand:
            tried.append(cand)
    chain = start
    for step in (_qlora, _checkpointing):
        chain = step(chain) or chain
        tried.append(chain)
    for step2 in (_smaller_batch, _shorter):
        if chain.gb(hardware) > usable:
            chain = step2(chain, hardware, usable) or chain
            tried.append(chain)
    if presets is None:
        from yaml import YAMLError

        try:
            presets = model_presets()
        except (OSError, YAMLError):  # presets are optional; the other fixes still stand
            presets = {}
    smaller = sorted(
        ((n, m) for n, m in presets.items()
         if m.get("family") == model.get("family") and m["params"] < model["params"]),
        key=lambda nm: -nm[1]["params"],
    )
    for name, m in smaller:
        as_is = start.with_(f"model={name}", model=m)
        tried.append(as_is)
        if as_is.gb(hardware) <= usable:
            break
        tried.append(_Plan(m, chain.lora, chain.quant, chain.train,
                           [f"model={name}", *chain.overrides], distributed))
    out, seen = [], set()
    for p in tried:
        key = " ".join(p.overrides)
        if not key or key in seen:
            continue
        seen.add(key)
        gb = p.gb(hardware)
        out.append({"override": key, "total_gb": round(gb, 1), "fits": gb <= usable,
                    "changes": len(p.overrides)})
    fitting = sorted((f for f in out if f["fits"]), key=lambda f: (f["changes"], -f["total_gb"]))
    rest = sorted((f for f in out if not f["fits"]), key=lambda f: f["total_gb"])
    shard = sharded_fix(start, hardware) if hardware.get("device") == "cuda" else None
    return [*([shard] if shard else []), *fitting, *rest][:limit]
