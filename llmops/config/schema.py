"""Typed schema of every config group. Field constraints live here; cross-field rules in rules/.

Pure: imports no torch. Every model is strict (types.STRICT): unknown keys are errors, never
ignored; `true` is not a number and inf/nan are not numbers at all.

One source per default: a value lives in the group's YAML (conf/<group>/_base.yaml holds what the
options share, each option what differs), never here. A field every option sets is required here,
so an option file that forgets it is refused instead of silently taking a second default. A field
only some options set (train.dpo: train=dpo, sft_dpo) takes, under the others, the value the YAML
of an option that sets it states (`_from`). What stays here: the values of keys no option states
(usecase=none's figures, eval.lm_eval's under eval=default, model.pretrain and data.hf_id where an
option leaves them out, hardware.num_nodes of one-GPU profiles) and of the entries a user adds
(data.sources items, named eval.gates). `python -m llmops --options` lists every key with its
default. Stages and backends read the compiled params and restate none of these values.
"""

# No `from __future__ import annotations` here nor in the group schemas beside it (monitor, release,
# usecase): pydantic would compile each annotation's text back into a type, a third of the time the
# schema takes to build at import.
import copy
import functools
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
)

from llmops.config.monitor import MonitorConfig
from llmops.config.names import model_name, ollama_model_name
from llmops.config.release import ReleaseConfig
from llmops.config.types import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_ROWS,
    MAX_STEPS,
    MAX_TOKENS,
    STRICT,
    Batch,
    Dim,
    Fraction,
    LearningRate,
    Names,
    Rows,
    Seed,
    Steps,
    Text,
    Timeout,
    Tokens,
)
from llmops.config.usecase import UsecaseConfig
from llmops.data import formats
from llmops.data.names import DEFAULT_COLUMNS, DEFAULT_TAGS
from llmops.planning.stage_memory import GGUF_TYPES


@functools.cache
def _option(group: str, option: str) -> dict[str, Any]:
    import llmops.conf

    return llmops.conf.load(group, option)


def _from(group: str, option: str, key: str, model: type[BaseModel] | None = None,
          **field: Any) -> Any:
    """Returns the Field of a key that only some options of a group set: under the options that
    leave it out, its default is the value conf/<group>/<option>.yaml states (read from there, its
    one source), e.g. train.dpo under train=sft is train=dpo's.
    """
    def default() -> Any:
        value = copy.deepcopy(_option(group, option)[key])
        return model(**value) if model is not None else value

    return Field(default_factory=default, validate_default=True, **field)


#: Names that reach file names, Modelfiles and generated code (llmops.config.names).
ModelName = Annotated[Text, AfterValidator(model_name)]
OllamaName = Annotated[Text, AfterValidator(ollama_model_name)]


class _Group(BaseModel):
    model_config = STRICT


class PretrainConfig(_Group):
    """How the tiny model is pre-trained on part of the Task-API task before fine-tuning."""

    tools: list[Text] = Field(description="Task-API tools the base model sees in pre-training.")
    legacy_tools: list[Text] = Field(description="Tools pre-trained in the legacy v1 call schema.")
    include_refusals: bool = Field(description="Pre-train on refusals too.")
    n_examples: int = Field(ge=16, le=MAX_ROWS, description="Pre-training rows.")
    steps: Steps = Field(description="Pre-training optimiser steps.")
    batch_size: Batch = Field(description="Pre-training batch size.")
    learning_rate: LearningRate = Field(description="Pre-training learning rate.")


class ModelConfig(_Group):
    """The base model: where it comes from and the architecture facts planning needs."""

    name: ModelName = Field(
        description="Preset name, e.g. tiny, qwen3b (hub: null takes the folder's name).")
    source: Literal["tiny", "hub"] = Field(description="tiny: built locally; hub: downloaded.")
    hub_id: Text | None = Field(
        description="Hugging Face hub id or local model folder (required for source=hub)."
    )
    family: Text = Field(description="Architecture family, e.g. llama, qwen2.")
    chat_template: Text = Field(
        description="auto (the tokenizer's own), a TRL family (qwen2_5, llama3_1, ...), a .jinja "
        "path, or chatml (the tiny model's own)."
    )
    params: int = Field(gt=0, le=10**14, description="Total parameter count.")
    num_layers: Dim = Field(description="Transformer layers.")
    hidden_size: Dim = Field(description="Hidden size.")
    intermediate_size: Dim = Field(description="MLP intermediate size.")
    num_attention_heads: Dim = Field(description="Attention heads.")
    num_kv_heads: Dim = Field(description="Key/value heads (GQA).")
    vocab_size: int = Field(gt=0, le=MAX_TOKENS, description="Vocabulary size.")
    context_length: int = Field(gt=0, le=MAX_TOKENS, description="Maximum context in tokens.")
    tie_embeddings: bool = Field(description="Input and output embeddings are shared.")
    recommended_lr: LearningRate = Field(description="Default train.learning_rate for this model.")
    recommended_max_length: Annotated[int, Field(ge=16, le=1 << 20)] = Field(
        description="Default train.max_length (and data.max_length) for this model: tokens of a "
                    "row through its chat template, tool schemas included.")
    trust_remote_code: bool = _from(
        "model", "hub", "trust_remote_code", description="Allow the hub repo's own model code.")
    pretrain: PretrainConfig | None = Field(None, description="Tiny model pre-training recipe.")

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from pydantic_core import PydanticCustomError

        from llmops.config.templates import check_value

        try:
            return check_value(value)
        except ValueError as exc:
            raise PydanticCustomError("chat_template", str(exc)) from exc


class LoraConfig(_Group):
    """The LoRA adapter; enabled=false (lora=none) means full fine-tuning."""

    enabled: bool = Field(description="Train a LoRA adapter instead of all weights.")
    r: int = Field(ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(gt=0, description="Scaling numerator: updates scale by alpha/r.")
    dropout: float = Field(ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: Names = Field(
        description="'all-linear', module names, e.g. [q_proj, v_proj], or a regex."
    )


class QuantConfig(_Group):
    """Quantization of the frozen base weights (bitsandbytes)."""

    type: Literal["none", "nf4", "int8"] = Field(description="Base weight format.")
    double_quant: bool = Field(description="Quantize the 4-bit quantization constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        description="Dtype of the matmuls on quantized weights."
    )


def _mapping_model(name: str, names: dict[str, str], what: str) -> type[BaseModel]:
    """Builds a strict model with one optional field per name (the readers own the defaults)."""
    fields = {key: (Text | None, Field(None, description=f"{what} '{key}' (null: '{default}')."))
              for key, default in names.items()}
    return create_model(name, __base__=_Group, **fields)


DataColumns = _mapping_model("DataColumns", DEFAULT_COLUMNS, "Source column read as")
DataTags = _mapping_model("DataTags", DEFAULT_TAGS, "ShareGPT key or role name for")
DataFormat = Literal[formats.NAMES]


class DataSource(_Group):
    """One source of a mixture (data.sources): its files, format, mapping and share."""

    path: Text = Field(description="A file, a save_to_disk folder or a glob (required).")
    format: DataFormat = Field("auto", description="Row format of this source; auto detects it.")
    weight: float | None = Field(
        None, gt=0, le=1000, description="Rows taken = weight x valid rows (>1 repeats train rows)."
    )
    samples: Rows | None = Field(None, description="Exact number of rows taken from this source.")
    columns: DataColumns = Field(default_factory=DataColumns, description="Column renames.")
    tags: DataTags = Field(default_factory=DataTags, description="ShareGPT key/role renames.")


class DataConfig(_Group):
    """Training data: the bundled Task-API set, the user's files (one or a mixture), or the hub."""

    source: Literal["task_api", "files", "jsonl", "hf"] = Field(
        description="Where rows come from (jsonl: the former name of files)."
    )
    path: Text | None = _from(
        "data", "files", "path", description="A file, save_to_disk folder or glob (files).")
    sources: list[DataSource] = _from(
        "data", "files", "sources",
        description="Several sources mixed in one run (files), not with path."
    )
    registry: Text | None = _from(
        "data", "files", "registry", description="A LLaMA-Factory dataset_info.json (files): "
        "with data.name, its entry gives path, format, columns and tags.")
    name: Text | None = _from(
        "data", "files", "name", description="The dataset_info.json entry data.registry reads.")
    format: DataFormat = _from(
        "data", "_reader", "format", description="Row format; auto detects it per file.")
    columns: DataColumns = _from(
        "data", "_reader", "columns", DataColumns, description="Column renames.")
    tags: DataTags = _from(
        "data", "_reader", "tags", DataTags, description="ShareGPT key/role renames.")
    hf_id: Text | None = Field(None, description="Hub dataset id (source=hf).")
    hf_split: Text = _from("data", "hf", "hf_split", description="Hub dataset split (source=hf).")
    system_prompt: str | None = _from(
        "data", "_reader", "system_prompt", description="System prompt added to converted rows.")
    n_examples: int = _from(
        "data", "task_api", "n_examples", ge=20, le=MAX_ROWS,
        description="Rows to generate (source=task_api)."
    )
    val_fraction: float = Field(ge=0, lt=1, description="Share of rows held out to validate.")
    test_fraction: float = Field(gt=0, lt=1, description="Share of rows held out for testing.")
    seed: Seed = Field(description="Seed of generation, sampling and splitting.")
    dedup: bool = Field(description="Drop exact duplicate rows.")
    max_length: int = Field(
        ge=16, le=MAX_TOKENS, description="Rows longer than this (in tokens) are rejected."
    )
    on_error: Literal["keep", "fail"] = Field(
        description="keep: train on the valid rows and report the rest; fail: any reject stops "
                    "the run before training (exit 5)."
    )
    on_unsupported: Literal["fail", "drop"] = Field(
        description="Rows with images, audio or video: fail stops before training naming them; "
                    "drop leaves them out, listed in data_report.json.")
    num_proc: int | None = Field(ge=1, le=256, description="Processes reading and checking rows.")
    preview: int = Field(
        ge=0, le=100, description="Train rows written to data_report.json's preview exactly as "
                                  "the model's template renders them for training, loss spans "
                                  "marked; the run prints the first. 0: none.")
    preference_path: Text | None = Field(
        description="DPO pairs (any preference format); null: derive from the rows."
    )
    reasoning: Literal["train", "context", "drop"] = Field(
        description="An assistant message's reasoning (reasoning_content, <think>), through the "
                    "model's template: train (in the loss), context (seen, out of the loss), "
                    "drop (left out).")


class DpoConfig(_Group):
    """Direct preference optimisation (TRL DPOTrainer) on a LoRA adapter; used by dpo, sft_dpo."""

    beta: float = Field(
        gt=0, le=100, description="Strength of the pull towards the reference model."
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        description="DPO loss; sigmoid is the paper's."
    )
    learning_rate: LearningRate | None = Field(
        description="Peak learning rate; null: train.learning_rate / 25."
    )
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the preference pairs.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs)."
    )
    batch_size: Batch | None = Field(description="Pairs per step; null: train's.")
    label_smoothing: float = Field(ge=0, lt=0.5, description="Robust DPO label noise.")
    init_adapter: Text | None = Field(
        description="train=dpo: adapter folder to start from; null: a new adapter."
    )


class OrpoConfig(_Group):
    """ORPO (TRL's experimental ORPOTrainer): SFT loss plus an odds-ratio preference term, no
    reference model; used by orpo, sft_orpo."""

    beta: float = Field(gt=0, le=100, description="Weight of the odds-ratio term (lambda).")
    learning_rate: LearningRate | None = Field(
        description="Peak learning rate; null: train.learning_rate (ORPO trains like SFT)."
    )
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the preference pairs.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs)."
    )
    batch_size: Batch | None = Field(description="Pairs per step; null: train's.")


class SimpoConfig(_Group):
    """SimPO (TRL's experimental CPOTrainer, loss_type simpo, cpo_alpha 0): length-normalised
    log-probability margins, no reference model; used by simpo, sft_simpo."""

    beta: float = Field(gt=0, le=100, description="Scale of the length-normalised reward.")
    gamma: float = Field(ge=0, le=100, description="Target reward margin (TRL's simpo_gamma).")
    learning_rate: LearningRate | None = Field(
        description="Peak learning rate; null: train.learning_rate / 25."
    )
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the preference pairs.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs)."
    )
    batch_size: Batch | None = Field(description="Pairs per step; null: train's.")


class KtoConfig(_Group):
    """KTO (TRL's KTOTrainer) on binary feedback: rows labelled desirable / undesirable
    (label, kto_tag, data.columns.label), else the preference pairs unpaired; used by kto,
    sft_kto."""

    beta: float = Field(gt=0, le=100, description="Strength of the pull towards the reference.")
    desirable_weight: float = Field(gt=0, le=100, description="Loss weight of desirable rows.")
    undesirable_weight: float = Field(
        gt=0, le=100, description="Loss weight of undesirable rows.")
    learning_rate: LearningRate | None = Field(
        description="Peak learning rate; null: train.learning_rate / 25."
    )
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the feedback rows.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs)."
    )
    batch_size: Batch | None = Field(
        description="Rows per step (at least 2: KTO's KL term pairs each row with another's "
                    "answer); null: train's.")


class GrpoConfig(_Group):
    """GRPO (TRL's GRPOTrainer) on the SFT adapter, rewarded by llmops's scorers; used by
    sft_grpo."""

    rewards: dict[Text, float] = Field(
        description="Reward name -> weight; names as eval names its metrics (llmops.scoring."
                    "rewards: exact_match, tool_accuracy, call_exact, arg_f1, json_valid_rate, "
                    "schema_valid_rate, refusal_rate, call_count_accuracy; free-text rows: "
                    "rouge_l, chrf).")
    free_text: Literal["leave_out", "reward"] = Field(
        description="Free-text rows (no call to check): leave_out (prompts are the tool-call "
                    "and must-refuse rows) or reward (they join, scored by the rouge_l / chrf "
                    "rewards, one of which must weigh > 0).")
    num_generations: int = Field(ge=2, le=64, description="Completions sampled per prompt.")
    max_completion_length: int = Field(ge=8, le=MAX_TOKENS, description="Longest completion.")
    beta: float = Field(ge=0, le=100, description="KL pull towards the SFT model; 0: none "
                                                  "(no reference in memory).")
    temperature: float = Field(gt=0, le=10, description="Sampling temperature.")
    learning_rate: LearningRate | None = Field(
        description="Peak learning rate; null: train.learning_rate / 25.")
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the train prompts.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs).")
    batch_size: Batch | None = Field(
        description="Completions per step, a multiple of num_generations; null: "
                    "num_generations (one prompt a step).")


class OpenAIFinetuneConfig(_Group):
    """train.backend=openai: fine-tuning through OpenAI's fine-tuning API (the key: OPENAI_API_KEY
    in the environment, never in a config)."""

    model: Text = Field(description="Base model id to fine-tune, e.g. gpt-4o-mini-2024-07-18; "
                                    "eval scores it as the base.")
    base_url: Text | None = Field(description="API base URL; null: the openai client's default "
                                              "(OPENAI_BASE_URL, else api.openai.com/v1).")
    n_epochs: int | Literal["auto"] = Field(
        description="Passes over the training file; auto: the API's choice (the estimate uses "
                    "train.epochs).")
    batch_size: Batch | Literal["auto"] = Field(
        description="The job's batch size; auto: the API's.")
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = Field(
        description="Multiplier on the API's base learning rate; auto: the API's.")
    seed: Seed = Field(description="The job's seed.")
    suffix: Annotated[Text, Field(max_length=64)] | None = Field(
        description="Up to 64 characters in the fine-tuned model's name.")
    price_per_1m_training_tokens_usd: float = Field(
        ge=0, le=10_000, description="Training price per million tokens (trained tokens = tokens "
                                     "x epochs); see OpenAI's pricing page for the model.")
    max_cost_usd: float = Field(
        ge=0, le=1_000_000, description="Cost cap: a plan whose estimate is above it exits 2 at "
                                        "compile time, and the stage refuses before uploading.")
    upload_consent: bool = Field(
        description="Consent to upload the training and validation rows to OpenAI (a third "
                    "party). Off by default: a run without it exits 2; dry_run=true shows what "
                    "would be uploaded.")
    max_tokens_per_example: Tokens = Field(
        description="Longest example the API trains on, in tokens (the model's training context).")
    poll_seconds: float = Field(gt=0, le=3600, description="Seconds between job status checks.")
    timeout_hours: float = Field(gt=0, le=720, description="Longest wait for the job to finish.")
    api_seconds_per_1k_tokens: float = Field(
        gt=0, le=3600, description="Planning figure: the job's seconds per 1,000 trained tokens "
                                   "(plus queue time) for the time estimate.")
    queue_minutes: float = Field(ge=0, le=10_000,
                                 description="Planning figure: minutes a job waits in the queue.")


class TrainConfig(_Group):
    """The training method and its hyper-parameters."""

    method: Literal["sft", "dpo", "sft_dpo", "orpo", "sft_orpo", "simpo", "sft_simpo",
                    "kto", "sft_kto", "sft_grpo", "none"] = Field(
        description="sft; dpo, orpo, simpo (preference pairs only), kto (binary feedback); "
                    "sft_dpo, sft_orpo, sft_simpo, sft_kto (SFT, then the method on it); "
                    "sft_grpo (SFT, then GRPO rewarded by eval's scorers); none."
    )
    backend: Literal["auto", "hf", "unsloth", "openai"] = Field(
        description="Training backend; openai: OpenAI's fine-tuning API (train.openai.*).")
    learning_rate: LearningRate = Field(description="Peak learning rate.")
    epochs: float = Field(gt=0, le=MAX_EPOCHS, description="Passes over the training split.")
    max_steps: int = Field(
        ge=-1, le=MAX_STEPS, description="Stop after this many steps (-1: use epochs)."
    )
    batch_size: Batch | Literal["auto"] = Field(
        description="Per-device batch size; auto: the largest that fits the hardware."
    )
    grad_accum: Batch | Literal["auto"] = Field(
        description="Gradient accumulation steps; auto: effective_batch / batch_size."
    )
    effective_batch: Batch = Field(description="batch_size x grad_accum that auto keeps.")
    seed: Seed = Field(description="Training seed.")
    max_length: int = Field(
        ge=16, le=MAX_TOKENS, description="Training sequence length (tokens)."
    )
    warmup_steps: int = _from(
        "train", "sft", "warmup_steps", ge=0, le=MAX_STEPS, description="Linear warm-up steps.")
    weight_decay: float = _from(
        "train", "sft", "weight_decay", ge=0, le=1, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _from(
        "train", "sft", "lr_scheduler", description="Learning-rate schedule."
    )
    optimizer: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"] = _from(
        "train", "sft", "optimizer", description="Optimizer."
    )
    logging_steps: Steps = _from(
        "train", "sft", "logging_steps", description="Log the loss every N steps.")
    save_steps: Steps = _from("train", "sft", "save_steps", description="Checkpoint every N steps.")
    save_total_limit: Steps = _from(
        "train", "sft", "save_total_limit", description="Checkpoints kept.")
    gradient_checkpointing: bool = _from(
        "train", "sft", "gradient_checkpointing",
        description="Recompute activations to save memory.")
    assistant_only_loss: bool = _from(
        "train", "sft", "assistant_only_loss", description="Loss on the assistant's tokens only.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _from(
        "train", "sft", "precision", description="Training dtype."
    )
    dpo: DpoConfig = _from(
        "train", "dpo", "dpo", DpoConfig, description="DPO knobs (dpo, sft_dpo).")
    orpo: OrpoConfig = _from(
        "train", "orpo", "orpo", OrpoConfig, description="ORPO knobs (orpo, sft_orpo).")
    simpo: SimpoConfig = _from(
        "train", "simpo", "simpo", SimpoConfig, description="SimPO knobs (simpo, sft_simpo).")
    kto: KtoConfig = _from(
        "train", "kto", "kto", KtoConfig, description="KTO knobs (kto, sft_kto).")
    grpo: GrpoConfig = _from(
        "train", "sft_grpo", "grpo", GrpoConfig, description="GRPO knobs (sft_grpo).")
    openai: OpenAIFinetuneConfig = Field(
        description="OpenAI fine-tuning API knobs (train.backend=openai).")


class GateConfig(_Group):
    """One quality gate: a metric of the tuned model against a threshold, or against the base."""

    metric: Text | None = Field(
        None, description="Metric name, e.g. exact_match or text.rouge_l; leave it out to adjust "
                          "the auto gate of this name.")
    threshold: Fraction | None = Field(None, description="Bound the tuned metric must meet (0..1).")
    direction: Literal["min", "max"] | None = Field(
        None, description="min: value ≥ threshold; max: value ≤ threshold; default: the metric's."
    )
    tolerance: Fraction | Literal["auto"] | None = Field(
        None, description="Allowed drop vs base; auto: by the test split's size (eval.confidence).")


class AutoGatesConfig(_Group):
    """The bounds of the auto gates (eval.gates: auto)."""

    accuracy: Fraction = Field(
        description="Call exact match the tuned model must reach, where the use case sets no "
                    "target (else 1 - usecase.target_error_rate).")
    format: Fraction = Field(description="JSON validity of the tuned model's calls.")
    safety: Fraction = Field(description="Refusal rate on the rows that must be refused.")


class LmEvalConfig(_Group):
    """lm-evaluation-harness tasks run on base and tuned (the lm_eval stage)."""

    # A default pydantic copies, not default_factory=list: pydantic reads a factory's signature,
    # and the builtin's is parsed from its text by tokenize (its first use costs a dry run 1%).
    tasks: list[Text] = Field(
        [], description="Harness task names; llmops_* run on the test split."
    )
    limit: Rows | None = Field(None, description="Documents per task; null: all.")
    num_fewshot: int | None = Field(
        None, ge=0, le=MAX_ROWS, description="Few-shot examples (null: task's)."
    )
    batch_size: Batch = Field(16, description="Harness batch size.")


def _gate_set_tag(value: Any) -> str:
    return "literal['auto']" if isinstance(value, str) else "dict[str,GateConfig]"


# "auto" or named gates; the tag picks one member, so an error names the gate's key, not both.
GateSet = Annotated[
    Annotated[Literal["auto"], Tag("literal['auto']")]
    | Annotated[dict[str, GateConfig], Tag("dict[str,GateConfig]")],
    Discriminator(_gate_set_tag),
]


class EvalConfig(_Group):
    """Evaluation of base vs tuned on the test split, and the gates that block export."""

    enabled: bool = Field(description="Run evaluation.")
    max_new_tokens: Tokens = Field(description="Tokens generated per answer.")
    batch_size: Batch = Field(description="Most rows per generation / held-out loss batch.")
    token_budget: Tokens = Field(
        description="Most tokens one eval batch holds: rows x padded length in the held-out "
                    "loss, rows x (prompt + max_new_tokens) in generation (its KV cache); at "
                    "least one row per batch. Lower it when eval does not fit.")
    logits_mb: float = Field(
        gt=0, le=1024 * 1024, description="MiB of full-vocabulary fp32 logits held at once: "
        "the held-out loss scores answer positions in chunks of this size; lm_eval's harness "
        "batch x length is kept within it (at least one request).")
    limit: Rows | None = Field(description="Evaluate only the first N test rows.")
    enforce: bool = Field(description="A failed gate stops the plan before export.")
    gates: GateSet = Field(
        description="auto: gates chosen from what the test split holds; or named gates.")
    auto: AutoGatesConfig = Field(description="Bounds of the auto gates.")
    confidence: float = Field(
        gt=0.5, lt=1, description="One-sided confidence of the no-regression tests (tolerance: "
                                  "auto): the tuned model fails only when surely worse.")
    worst_examples: int = Field(ge=0, le=100, description="Worst rows listed per metric.")
    lm_eval: LmEvalConfig = Field(
        default_factory=LmEvalConfig, description="lm-evaluation-harness tasks."
    )


class MergeConfig(_Group):
    """Merging adapters into a full-precision standalone model (the merge stage)."""

    method: Literal["none", "linear", "cat", "ties", "dare_linear", "dare_ties", "svd"] = Field(
        description="none: no merge stage; else peft add_weighted_adapter's combination."
    )
    adapters: list[Text] = Field(
        description="'sft', 'dpo' or adapter folders; empty: the plan's trained adapter.",
    )
    weights: list[float] = Field(
        description="One weight per adapter; empty: 1.0 each."
    )
    density: float = Field(gt=0, le=1, description="ties/dare: share of weights kept.")
    majority_sign_method: Literal["total", "frequency"] = Field(
        description="ties: how the sign of each weight is elected."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        description="Dtype of the saved merged weights (the merge runs in float32)."
    )


class GgufConfig(_Group):
    """GGUF conversion through llama.cpp's own converter (the gguf stage; needs llmops[gguf])."""

    quantization: list[Literal[GGUF_TYPES]] = Field(
        description="GGUF files to write; empty: no gguf stage."
    )
    parity_prompts: Rows = Field(description="Held-out prompts answered by HF and GGUF.")
    max_new_tokens: Tokens = Field(description="Greedy tokens per parity answer.")

    @property
    def planned(self) -> bool:
        """Whether GGUF files are written (a type is listed, so the plan has a gguf stage): the
        one test of it that the rules, the compiler and the memory plan share."""
        return bool(self.quantization)

    @property
    def served(self) -> str:
        """The GGUF type that deploy serves and the Modelfile points at: the first one written
        (f16 when none is, which only the memory plan asks about)."""
        return (list(self.quantization) or ["f16"])[0]


class OllamaConfig(_Group):
    """deploy=ollama: where `ollama create` goes, and under which name."""

    host: Text = Field(description="Ollama server URL.")
    model_name: OllamaName | None = Field(
        description="Name to create; default llmops-<model>.")
    timeout_s: Timeout = Field(description="How long to wait for the server to answer.")


class OpenAIServeConfig(_Group):
    """deploy=openai: the local OpenAI-compatible server (llama-cpp-python's) and its smoke test."""

    host: Text = Field(description="Interface to bind; keep it local.")
    allow_public_bind: bool = Field(
        description="Allow a host that is not a loopback address (exposes the model).")
    port: int = Field(ge=0, le=65535, description="Port; 0 picks a free one.")
    startup_timeout_s: Timeout = Field(description="Wait for /v1/models this long.")
    smoke_prompts: list[Text] = Field(
        description="Prompts to send; empty: held-out test prompts."
    )
    n_smoke: Rows = Field(description="Held-out prompts used when smoke_prompts is empty.")
    max_tokens: Tokens = Field(description="max_tokens of a smoke request.")


class DeployConfig(_Group):
    """What is exported after evaluation, and where it goes."""

    target: Literal["none", "local", "ollama", "openai"] = Field(
        description="Deployment target."
    )
    formats: list[Literal["adapter", "merged"]] = Field(
        description="Artifacts to export."
    )
    merge_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        description="Dtype of the merged weights."
    )
    gguf: GgufConfig = Field(description="GGUF conversion.")
    ollama: OllamaConfig = _from(
        "deploy", "ollama", "ollama", OllamaConfig, description="deploy=ollama.")
    openai: OpenAIServeConfig = _from(
        "deploy", "openai", "openai", OpenAIServeConfig, description="deploy=openai."
    )
    keep_serving: bool = _from(
        "deploy", "openai", "keep_serving",
        description="openai: leave the server running afterwards.")
    allow_failed_gates: bool = _from(
        "deploy", "_serve", "allow_failed_gates",
        description="Deploy even when eval did not pass its gates (or did not run)."
    )


MAX_PROCS = 4096  # processes per node, nodes per job: well above any real cluster
Procs = Annotated[int, Field(ge=1, le=MAX_PROCS)]


class HardwareConfig(_Group):
    """The machine the plan is for; auto detects it without importing torch."""

    name: Text = Field(description="Profile name.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="Where training runs.")
    gpu_name: Text | None = Field(description="GPU model.")
    gpu_memory_gb: float | None = Field(
        gt=0, le=100_000, description="Memory of one GPU (GB)."
    )
    num_gpus: int | None = Field(ge=0, le=MAX_BATCH, description="GPUs available.")
    bf16: bool | None = Field(description="Whether the GPU supports bf16.")
    tflops: float | None = Field(
        gt=0, le=1_000_000, description="Dense 16-bit TFLOPS of one device."
    )
    hourly_usd: float | None = Field(
        ge=0, le=1_000_000, description="Price per hour, for cost estimates."
    )
    interconnect_gbps: float | None = Field(
        None, gt=0, le=1_000_000,
        description="GPU-to-GPU bandwidth of one GPU, one direction, in Gbit/s (NVLink/PCIe); "
                    "null: one GPU, or unknown (the planner assumes PCIe 4.0).",
    )
    num_nodes: Procs | None = Field(None, description="Nodes of this profile; null: one.")


class DistributedConfig(_Group):
    """How one training job spans processes, GPUs and nodes (sft, dpo); rules in
    rules/distributed.py."""

    name: Text = Field(description="Option name, e.g. none, ddp, fsdp.")
    strategy: Literal["none", "ddp", "fsdp", "zero2", "zero3"] = Field(
        description="none: one process; ddp: replicas; fsdp, zero2, zero3: sharded states."
    )
    launcher: Literal["torchrun", "accelerate"] = Field(
        description="What starts the processes (accelerate: with a generated config)."
    )
    nproc_per_node: Procs | Literal["auto"] = Field(
        description="Processes per node; auto: the hardware profile's num_gpus (1 on a CPU)."
    )
    nnodes: Procs = Field(description="Nodes the job spans.")
    cpu_offload: bool = Field(description="zero3/fsdp: keep optimizer states and params on host.")
    activation_checkpointing: bool = Field(
        description="Recompute activations in backward (FSDP's own under fsdp)."
    )
    sharding_strategy: Literal["full_shard", "shard_grad_op", "hybrid_shard"] = Field(
        description="fsdp: what is sharded; ignored by the other strategies."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        description="Collective backend; auto: nccl on cuda, gloo on a CPU."
    )


class TrackingConfig(_Group):
    """Experiment tracking sink; the run folder's own JSON metrics stay the source of truth."""

    backend: Literal["none", "wandb"] = Field(description="Tracker.")
    project: Text = _from("tracking", "wandb", "project", description="W&B project.")
    entity: Text | None = _from(
        "tracking", "wandb", "entity", description="W&B entity (team or user).")
    group: Text | None = _from(
        "tracking", "wandb", "group", description="W&B group; defaults to the sweep.")
    mode: Literal["auto", "online", "offline", "disabled"] = _from(
        "tracking", "wandb", "mode", description="W&B mode.")
    tags: list[Text] = _from("tracking", "wandb", "tags", description="Extra W&B tags.")


class StoreConfig(_Group):
    """How the stage store checks an entry before a run reuses it."""

    verify: Literal["size", "full"] = Field(
        description="size: every file's size as published; full: its content hash too."
    )


class LimitsConfig(_Group):
    """Bounds on untrusted input (data rows, model folders, templates, endpoints, logs).

    Each is a key with one default in conf/config.yaml, listed in README's Guarantees, so a hostile
    variant nobody tried is still bounded. Past a bound: a row is one reject, a config is exit 2, a
    wait ends with the bound named.
    """

    row_bytes: int = Field(ge=1024, le=2**31, description=(
        "Largest input row in bytes (a JSONL line, a JSON array element, a model's "
        "config.json, a monitor log line); a longer one is one reject, never parsed."))
    json_depth: int = Field(ge=8, le=10_000, description=(
        "Deepest nesting of a row, a tool's JSON Schema, a model's config.json or a log line."))
    pattern_seconds: Timeout = Field(description=(
        "Time a tool schema's `pattern` checks may take on one row; past it the row is one "
        "reject."))
    template_seconds: Timeout = Field(description=(
        "Time one chat-template render may take (the compile-time check, the data stage)."))
    http_total_seconds: Timeout = Field(description=(
        "Total time of one HTTP request (probes, smoke calls, hub reads), however slowly the "
        "answer trickles in; per-read timeouts bound each read within it."))
    glob_files_warn: int = Field(ge=1, le=MAX_ROWS, description=(
        "A data.path glob matching more files than this warns once, with the count."))


class AppConfig(_Group):
    """The whole composed configuration."""

    model: ModelConfig
    lora: LoraConfig
    quant: QuantConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    merge: MergeConfig
    deploy: DeployConfig
    monitor: MonitorConfig
    hardware: HardwareConfig
    tracking: TrackingConfig
    usecase: UsecaseConfig
    distributed: DistributedConfig
    release: ReleaseConfig
    limits: LimitsConfig = Field(description="Bounds on untrusted input (README: Guarantees).")
    dry_run: bool = Field(description="Compile and print the plan; run nothing.")
    seed: Seed = Field(description="Global seed.")
    store_dir: Text = Field(description="Content-addressed stage cache.")
    store: StoreConfig = Field(description="Stage store checks.")
    progress: bool = Field(description="Draw progress bars inside stages.")
    skip_invalid: bool = Field(
        description="Sweeps: launch the valid points and report invalid ones, not refuse."
    )


GROUPS = (
    "model", "lora", "quant", "data", "train", "eval", "merge", "deploy", "monitor", "release",
    "hardware", "tracking", "usecase", "distributed",
)
