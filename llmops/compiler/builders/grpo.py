"""The grpo stage's params and builder: GRPO of the SFT adapter, rewarded by llmops's scorers
(``llmops.scoring.rewards``). Pure.

Its inputs are {"data", "sft"}, plus {"base"} for the tiny model. It writes adapter/,
checkpoints/, grpo_report.json (reward curve per reward, KL, completion length, the share of
completions that parse, held_out {start, sft, grpo, improved}: the mean weighted reward of the
test split's checkable rows answered greedily) and grpo_reward_curve.png.
"""

from typing import Literal

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    LoraParams,
    ModelParams,
    QuantParams,
    TrainParams,
    method_train,
)
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.plan import METHOD_STAGES


class GrpoKnobs(TypedDict):
    """train.grpo's rewards and sampling."""

    rewards: dict[str, float]
    """Reward name (llmops.scoring.rewards) -> weight."""
    num_generations: int
    max_completion_length: int
    beta: float
    """KL pull towards the SFT model; 0: no reference."""
    temperature: float
    free_text: Literal["leave_out", "reward"]
    """leave_out, or reward: free-text rows join the prompts, scored by rouge_l / chrf."""


class GrpoParams(TypedDict):
    """Params of the grpo stage (train=sft_grpo)."""

    model: ModelParams
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    """sft's train, with learning_rate, epochs, max_steps from train.grpo (learning_rate null:
    train.learning_rate / 25) and batch_size = train.grpo.batch_size or num_generations, in
    completions."""
    grpo: GrpoKnobs
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_grpo(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the grpo stage (train=sft_grpo) on the sft adapter."""
    t, g = s.cfg.train, s.cfg.train.grpo
    if "grpo" not in METHOD_STAGES[t.method]:
        return
    lr = g.learning_rate if g.learning_rate is not None else t.learning_rate / 25
    train = method_train(s.train, lr, g.epochs, g.max_steps, g.batch_size or g.num_generations)
    train["grad_accum"] = 1  # a step's completions are the prompts' groups
    params: GrpoParams = {
        "model": s.model, "lora": s.lora, "quant": s.quant, "train": train,
        "grpo": {"rewards": dict(g.rewards), "num_generations": g.num_generations,
                 "max_completion_length": g.max_completion_length, "beta": g.beta,
                 "temperature": g.temperature, "free_text": g.free_text}}
    steps = f"{g.max_steps} steps" if g.max_steps > 0 else f"{g.epochs:g} epochs"
    rewards = " + ".join(f"{w:g}*{n}" for n, w in g.rewards.items())
    b.add("grpo", s.training(params), ["data", "sft", *s.base],
          f"GRPO {g.num_generations} completions/prompt, reward {rewards}, beta {g.beta:g}, "
          f"lr {lr:g}, {steps}")
