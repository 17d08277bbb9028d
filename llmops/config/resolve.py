"""Resolves a validated config's "auto" values once, into the frozen `Resolved` everyone reads.

Hardware (this machine for hardware=auto), precision, the quantized matmul dtype, the training
backend, batch size and gradient accumulation, and the CPU threads stages use are decided here and
nowhere else: the config rules and ``compile_plan`` both take the same `Resolved`.

Pure: no torch. The batch search is the memory planner's arithmetic; the backend probe reads the
Environment (``importlib.util.find_spec``), never imports unsloth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmops.core.plan import METHOD_STAGES
from llmops.env import Environment
from llmops.planning import batch
from llmops.planning.backend import resolve_backend
from llmops.planning.distributed import resolve_distributed
from llmops.planning.precision import compute_dtype_for, precision_for

if TYPE_CHECKING:
    from llmops.config.schema import AppConfig

MULTI_GPU_KEYS = ("interconnect_gbps", "num_nodes")
SMALL_WORK = 2e10
"""Below this much work per step (tokens x (parameters outside the embedding + vocab x hidden
size), the matmuls of one forward pass) a CPU run keeps torch on one thread: for tiny matrices
extra threads only add synchronisation, and with other processes on the cores they slow it down
many times over (measured here: 120 eval rows in 0.7 s on 1 thread vs 17-43 s on 2 under load;
180 SFT steps in 11 s vs 171 s). A small model on a real vocabulary spends its time in the LM head
(vocab x hidden per token) and gets every core (benchmarks/threads.py)."""


@dataclass(frozen=True)
class Resolved:
    """The config's "auto" values, resolved once for one machine.

    Attributes:
        hardware: The hardware profile with auto replaced (device, GPU, cpu_count, memory_gb).
        precision: Training precision: fp32, bf16 or fp16.
        compute_dtype: Dtype of the matmuls on quantized weights: float32, bfloat16, float16.
        backend: Training backend: hf or unsloth.
        batch_size: Per-device batch size; None when nothing trains (train=none).
        grad_accum: Gradient accumulation steps; None when nothing trains.
        threads: Torch CPU threads inside stages: 1 on a CPU when a step's work is under
            SMALL_WORK (``step_work``), None for torch's default (all cores).
        distributed: The distributed group, nproc_per_node and backend resolved, plus
            world_size and fsdp_version (``llmops.planning.distributed.resolve_distributed``).
        facts_from: Where each model architecture fact the config left null was read (e.g.
            {"params": "DIR/config.json (qwen2 arithmetic)"}); empty when the config set them all.
    """

    hardware: Mapping[str, Any]
    precision: str
    compute_dtype: str
    backend: str
    batch_size: int | None
    grad_accum: int | None
    threads: int | None
    distributed: Mapping[str, Any]
    facts_from: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def device(self) -> str:
        """Returns where training runs: "cpu" or "cuda"."""
        return str(self.hardware["device"])

    def planner_inputs(self, cfg: AppConfig) -> tuple[dict, dict | None, dict, dict]:
        """Returns (model, lora, quant, train) for the memory planner, with the batch resolved.

        Args:
            cfg: The validated config this was resolved from.
        """
        model, lora, quant, train = planner_inputs(cfg, self.precision, self.compute_dtype)
        train.update(batch_size=self.batch_size, grad_accum=self.grad_accum)
        return model, lora, quant, train

    @property
    def planner_distributed(self) -> dict[str, Any] | None:
        """Returns the distributed group for the memory planner; None for one process."""
        return sharded(self.distributed)


def sharded(distributed: Mapping[str, Any]) -> dict[str, Any] | None:
    """Returns the resolved distributed group as the planner takes it: None for one process."""
    return dict(distributed) if distributed["strategy"] != "none" else None


def resolve_hardware(cfg: AppConfig, env: Environment) -> dict[str, Any]:
    """Returns the hardware profile with 'auto' replaced by what this machine has."""
    # The multi-GPU facts are set only by multi-GPU profiles; left out when unset, so the plans
    # of every other profile keep their fingerprints (the compute and decide stages hash hw).
    hw = cfg.hardware.model_dump(exclude={k for k in MULTI_GPU_KEYS
                                          if getattr(cfg.hardware, k) is None})
    if hw["device"] == "auto":
        if env.cuda:
            gpu = env.gpus[0]
            hw.update(device="cuda", gpu_name=gpu.name, gpu_memory_gb=gpu.memory_gb,
                      num_gpus=len(env.gpus))
        else:
            hw.update(device="cpu", num_gpus=0, bf16=False)
    hw.update(cpu_count=env.cpu_count, memory_gb=env.memory_gb)
    if env.memory_source != "physical RAM":  # only then: other plans keep their fingerprints
        hw["memory_source"] = env.memory_source
    return hw


def step_work(model: Mapping[str, Any], tokens: int) -> float:
    """Returns the matmul work of one forward pass over `tokens` tokens: tokens x (parameters
    outside the embedding + vocab x hidden size, the LM head's product, tied or not)."""
    vh = int(model["vocab_size"]) * int(model["hidden_size"])
    embed = vh if int(model["params"]) > vh else 0
    return float(tokens) * (int(model["params"]) - embed + vh)


def cpu_threads(device: str, model: Mapping[str, Any], tokens: int) -> int | None:
    """Returns the torch CPU threads for stages: 1 on a CPU when a step's work
    (``step_work``) is under SMALL_WORK, else None (all cores)."""
    return 1 if device == "cpu" and step_work(model, tokens) < SMALL_WORK else None


def planner_inputs(cfg: AppConfig, precision: str,
                   compute_dtype: str) -> tuple[dict, dict | None, dict, dict]:
    """Returns (model, lora, quant, train) for the memory planner, batch as configured.

    train.backend=auto is sized as hf, the larger of the two, so that the batch a plan trains
    with does not depend on whether unsloth happens to be installed.
    """
    model = cfg.model.model_dump(exclude={"pretrain"})
    lora = cfg.lora.model_dump(exclude={"enabled"}) if cfg.lora.enabled else None
    quant = {**cfg.quant.model_dump(), "compute_dtype": compute_dtype}
    train = cfg.train.model_dump()
    train.update(precision=precision,
                 backend="hf" if cfg.train.backend == "auto" else cfg.train.backend)
    return model, lora, quant, train


def stage_inputs(cfg: AppConfig) -> dict[str, Any]:
    """Returns what the plan's model-loading stages were configured with, from a validated
    AppConfig: the planned stages (as ``compile_plan`` adds them) and their memory knobs.

    What ``llmops.planning.stage_memory`` takes as `inputs`.

    Args:
        cfg: The validated config.
    """
    t, e, m, dp = cfg.train, cfg.eval, cfg.merge, cfg.deploy
    stages = list(METHOD_STAGES[t.method])
    merged = m.method != "none"
    tuned = bool(stages) or merged
    if merged:
        stages.append("merge")
    if e.enabled:
        stages.append("eval_base")
        if e.lm_eval.tasks:
            stages.append("lm_eval")
        if tuned:
            stages.append("eval")
    exports = dp.target != "none" and tuned
    if exports and "merged" in dp.formats and not merged and cfg.lora.enabled:
        stages.append("export")
    if exports and dp.gguf.planned:
        stages.append("gguf")
        if dp.target in ("ollama", "openai"):
            stages.append("deploy")
    return {
        "stages": stages,
        "max_length": int(cfg.data.max_length),
        "merged": merged,
        "eval": e.model_dump(exclude={"gates", "auto"}),
        "dpo": {"batch_size": t.dpo.batch_size},
        # only for the method that runs them, so the other plans' compute params stay
        **{k: {"batch_size": getattr(t, k).batch_size} for k in ("orpo", "simpo", "kto")
           if k in stages},
        **({"grpo": {"batch_size": t.grpo.batch_size or t.grpo.num_generations,
                     "num_generations": t.grpo.num_generations,
                     "max_completion_length": t.grpo.max_completion_length,
                     "beta": t.grpo.beta}} if "grpo" in stages else {}),
        "merge": {"dtype": m.dtype},
        "export": {"merge_dtype": dp.merge_dtype},
        "gguf": dp.gguf.model_dump(exclude={"parity_prompts"}),
        "deploy": {"serve_quantization": dp.gguf.served},
    }


def resolve(cfg: AppConfig, env: Environment,
            facts_from: Mapping[str, str] | None = None) -> Resolved:
    """Resolves every "auto" value of a schema-valid config for this machine, once.

    Args:
        cfg: The schema-valid config.
        env: Facts about this machine (GPUs, memory, installed packages).
        facts_from: Where the model facts read from config.json came from
            (``llmops.config.model_facts``); recorded, not resolved again.

    Returns:
        The frozen resolution the config rules and ``compile_plan`` share.
    """
    hw = resolve_hardware(cfg, env)
    precision = precision_for(cfg.train.precision, hw)
    compute_dtype = compute_dtype_for(cfg.quant.compute_dtype, precision)
    distributed = resolve_distributed(cfg.distributed.model_dump(), hw)
    # unsloth trains on one GPU: auto picks it only for one process.
    backend = resolve_backend(cfg.train.backend, hw["device"] == "cuda" and env.cuda,
                              env.has("unsloth") and distributed["world_size"] == 1)
    size: tuple[int | None, int | None] = (None, None)
    if cfg.train.method != "none":
        model, lora, quant, train = planner_inputs(cfg, precision, compute_dtype)
        size = batch.resolve_batch(model, lora, quant, train, hw, sharded(distributed))
    return Resolved(
        hardware=MappingProxyType(hw), precision=precision, compute_dtype=compute_dtype,
        backend=backend, batch_size=size[0], grad_accum=size[1],
        threads=cpu_threads(hw["device"], cfg.model.model_dump(),
                            (size[0] or cfg.eval.batch_size) * cfg.train.max_length),
        distributed=MappingProxyType(distributed),
        facts_from=MappingProxyType(dict(facts_from or {})),
    )
