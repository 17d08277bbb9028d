"""The base stage's params and builder: the tiny model, built and pre-trained locally. Pure.

Its params come from conf/model/tiny.yaml (model.pretrain) and the run's seed; hub models have no
base stage.
"""

from typing_extensions import TypedDict

from llmops.compiler.inputs import PlanBuilder, StageInputs


class ArchParams(TypedDict):
    """The tiny Llama's architecture, in transformers' LlamaConfig names (from model.*)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    """model.context_length."""
    vocab_size: int
    tie_word_embeddings: bool


class PretrainParams(TypedDict):
    """How the tiny model is pre-trained on part of the Task-API task (model.pretrain.*)."""

    tools: list[str]
    """Task-API tools the base model sees in pre-training."""
    legacy_tools: list[str]
    """Tools pre-trained in the legacy v1 call schema."""
    include_refusals: bool
    n_examples: int
    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    """The run's seed."""


class BaseParams(TypedDict):
    """Params of the base stage (model=tiny): writes the model folder and base_report.json."""

    arch: ArchParams
    pretrain: PretrainParams


def add_base(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the base stage (model=tiny): builds and pre-trains the tiny model."""
    m = s.cfg.model
    if m.source != "tiny":
        return
    assert m.pretrain is not None  # guaranteed by config/rules/model.py
    arch: ArchParams = {
        "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_kv_heads, "max_position_embeddings": m.context_length,
        "vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings,
    }
    pretrain = PretrainParams(**m.pretrain.model_dump(), seed=s.cfg.seed)
    params: BaseParams = {"arch": arch, "pretrain": pretrain}
    b.add("base", params, [],
          f"build + pre-train tiny Llama ({m.num_layers}L, d={m.hidden_size}, "
          f"{m.pretrain.steps} steps)")
