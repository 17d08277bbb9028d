"""The params several stages share: their types, and the helpers their builders share. Pure.

A stage's params are plain JSON data (they go into plan.json and the fingerprint); these
``TypedDict``s say which keys each part holds and what type each value has. Every key is present
unless marked ``NotRequired``. The option YAMLs under conf/ own the defaults and the schema
(llmops/config/schema.py) the allowed values: the types restate neither, so a value the schema
limits to a few names is typed ``str`` here. "auto" never reaches a stage: the values marked
resolved are resolved once (llmops.config.resolve) before the compiler runs.
"""

from pathlib import Path
from typing import Literal

# typing_extensions' TypedDict: pydantic checks these types (tests/compiler/test_params_types.py),
# and on Python < 3.12 it reads NotRequired and nested TypedDicts only from this one.
from typing_extensions import NotRequired, TypedDict

from llmops.core.fingerprint import file_sha256


class ModelParams(TypedDict):
    """The model as the stages that load it see it (base, data, sft, dpo, eval, export, ...)."""

    name: str
    """model.name: the preset name (tiny, qwen3b, ...); model=hub: the folder's name."""
    hub_id: str | None
    """Hub id or absolute model folder; None for the tiny model (its folder is the base stage)."""
    chat_template: str
    """chatml (the tiny model's), a TRL family, auto (the tokenizer's own) or an absolute .jinja
    path."""
    trust_remote_code: bool
    """Let transformers run the model repository's own code."""
    chat_template_hash: NotRequired[str]
    """Only for a template file: its xxh3-128 content hash, so editing it rebuilds the stages."""
    hub_folder_hash: NotRequired[str]
    """Only for a local model folder: its content digest (``llmops.compiler.inputs.folder_hash``),
    so a folder retrained or replaced in place is not reused from the store."""


class ModelFacts(TypedDict):
    """Every model.* fact but pretrain and recommended_max_length: what the planners (decide,
    compute) and the release card read. model=hub fills the null ones from config.json."""

    name: str
    source: str
    """tiny (built locally) or hub."""
    hub_id: str | None
    family: str
    chat_template: str
    params: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    tie_embeddings: bool
    recommended_lr: float
    trust_remote_code: bool


class LoraParams(TypedDict):
    """The LoRA adapter (lora.*, enabled left out); a stage's ``lora`` is None for lora=none (a
    full fine-tune)."""

    r: int
    alpha: float
    """A float, kept a float (lora.r=4 lora.alpha=0.5 scales by 1/8)."""
    dropout: float
    target_modules: str | list[str]
    """'all-linear', module names, or a regex."""


class QuantParams(TypedDict):
    """Quantization of the frozen base weights (quant.*)."""

    type: str
    """none, nf4 or int8."""
    double_quant: bool
    compute_dtype: str
    """float32, bfloat16 or float16: resolved, never auto."""


class TrainParams(TypedDict):
    """The training hyper-parameters (train.*, method and dpo left out), backend and precision
    resolved; batch_size and grad_accum resolved whenever something trains (with train=none they
    stay as written, "auto" included: only decide reads them then)."""

    backend: str
    """hf, unsloth or openai (resolved, never auto)."""
    learning_rate: float
    epochs: float
    max_steps: int
    """-1: train for epochs."""
    batch_size: int | Literal["auto"]
    """Per-device (per-rank) rows of a step."""
    grad_accum: int | Literal["auto"]
    effective_batch: int
    seed: int
    max_length: int
    warmup_steps: int
    weight_decay: float
    lr_scheduler: str
    optimizer: str
    logging_steps: int
    save_steps: int
    save_total_limit: int
    gradient_checkpointing: bool
    assistant_only_loss: bool
    precision: str
    """fp32, bf16 or fp16 (resolved, never auto)."""
    resume_dir: NotRequired[str]
    """Never compiled: the runner sets it at run time to the checkpoint of an interrupted attempt
    (stages/CONTRACT.md); not part of the fingerprint."""


class ApiModelParams(TypedDict):
    """A model served by OpenAI's API (train.backend=openai): eval_base and eval answer through
    its chat completions."""

    model: str
    """train.openai.model: the base model id (eval reads the fine-tuned id from sft's report)."""
    base_url: str | None
    """train.openai.base_url; None: the openai client's default."""


class OpenAIJobParams(TypedDict):
    """The fine-tuning job of train.backend=openai (train.openai.*, planning figures left out)."""

    model: str
    base_url: str | None
    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    seed: int
    suffix: str | None
    price_per_1m_training_tokens_usd: float
    max_cost_usd: float
    upload_consent: bool
    max_tokens_per_example: int
    poll_seconds: float
    timeout_hours: float
    epochs: float
    """The epochs the cost is estimated with: n_epochs, or train.epochs for auto."""
    on_error: str
    """data.on_error: fail refuses rows that break the API's rules (exit 5); keep leaves them
    out and lists them."""


class HardwareParams(TypedDict):
    """The resolved hardware profile (hardware.*, auto replaced by this machine's)."""

    name: str
    device: str
    """cpu or cuda (resolved, never auto)."""
    gpu_name: str | None
    gpu_memory_gb: float | None
    num_gpus: int | None
    bf16: bool | None
    tflops: float | None
    hourly_usd: float | None
    cpu_count: int
    """This machine's CPU count."""
    memory_gb: float
    """This machine's memory (GB)."""
    interconnect_gbps: NotRequired[float]
    """Only where a multi-GPU profile sets it (so the other plans keep their fingerprints)."""
    num_nodes: NotRequired[int]
    """Only where a multi-node profile sets it."""
    memory_source: NotRequired[str]
    """Only when memory_gb is not the physical RAM (a cgroup limit, ...)."""


class DistributedParams(TypedDict):
    """The distributed group of the training stages (sft, dpo) and compute, resolved by
    ``llmops.planning.distributed.resolve_distributed``. Present only when distributed is not
    none, so one-process fingerprints stay those of llmops 0.2.0. With quant=nf4 and strategy
    fsdp/zero3 the backend stores the 4-bit weights in quant.compute_dtype."""

    name: str
    """ddp, fsdp, deepspeed_zero2 or deepspeed_zero3."""
    strategy: str
    """ddp, fsdp, zero2 or zero3."""
    launcher: str
    """torchrun or accelerate."""
    nproc_per_node: int
    """Resolved, never auto."""
    nnodes: int
    world_size: int
    """nproc_per_node x nnodes."""
    cpu_offload: bool
    activation_checkpointing: bool
    sharding_strategy: str
    """full_shard, shard_grad_op or hybrid_shard (fsdp)."""
    backend: str
    """nccl or gloo (resolved, never auto)."""
    fsdp_version: int | None
    """1 or 2 under fsdp, else None."""


def procs_text(d: DistributedParams | None) -> str:
    """Returns the plan table's note on a distributed group ("" for one process)."""
    if not d:
        return ""
    nodes = f" x {d['nnodes']} nodes" if d["nnodes"] > 1 else ""
    return f", {d['name']} x {d['nproc_per_node']} procs{nodes} ({d['launcher']}, {d['backend']})"


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_files(folder: str | Path) -> dict[str, str]:
    """Returns {path: sha256} of the adapter files in folder (config and weights)."""
    root = Path(folder).expanduser().resolve()
    return {str(root / n): file_sha256(root / n) for n in ADAPTER_FILES if (root / n).is_file()}



def method_train(train: TrainParams, learning_rate: float, epochs: float, max_steps: int,
                 batch_size: int | None) -> TrainParams:
    """Returns sft's train params with a preference method's own schedule (train.<method>.*:
    learning_rate, epochs, max_steps; batch_size None: train's)."""
    return {**train, "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps,
            "batch_size": batch_size or train["batch_size"]}
