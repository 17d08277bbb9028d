"""The `unsloth` training backend: unsloth's FastLanguageModel + TRL SFTTrainer on a CUDA GPU.

unsloth patches transformers and trl when imported, so it is imported inside `train_sft`, before
trl/transformers are imported in that function. Importing unsloth without a GPU raises
NotImplementedError, so availability is probed with `importlib.util.find_spec` only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llmops.errors import StageError

NEEDS = (
    "train.backend=unsloth needs a CUDA GPU and `pip install llmops[unsloth]`; use train.backend=hf"
)


def check_available(device: str) -> None:
    """Raises StageError unless unsloth is installed and the run has a CUDA GPU.

    Args:
        device: The run's device from the context ("cpu" or "cuda").
    """
    if importlib.util.find_spec("unsloth") is None:
        raise StageError(f"sft: unsloth is not installed. {NEEDS}.")
    if not str(device).startswith("cuda"):
        raise StageError(f"sft: no CUDA GPU on this run (device={device}). {NEEDS}.")
    import torch

    if not torch.cuda.is_available():
        raise StageError(f"sft: torch sees no CUDA GPU. {NEEDS}.")


#: What target_modules="all-linear" means for unsloth (it takes module names only).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peft_kwargs(lora: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Returns the keyword arguments for `FastLanguageModel.get_peft_model` (without the model).

    Pure (no unsloth import), so the mapping from compiled params to the adapter can be tested
    without a GPU. alpha stays a float: the update scales by alpha/r.

    Args:
        lora: The compiled lora params (llmops.compiler.builders.common.LoraParams).
        train: The compiled train params (gradient_checkpointing, seed).
    """
    from llmops.backends.common import adapter_kwargs

    target = lora["target_modules"]
    return {
        **adapter_kwargs(lora),
        "target_modules": list(ALL_LINEAR if target == "all-linear" else target),
        "bias": "none",
        "use_gradient_checkpointing": "unsloth" if train["gradient_checkpointing"] else False,
        "random_state": int(train["seed"]),
    }


class UnslothBackend:
    """Fine-tunes with unsloth's FastLanguageModel (LoRA/QLoRA) and TRL's SFTTrainer."""

    name = "unsloth"

    def train_sft(
        self, params: dict[str, Any], data_dir: Path, base_model: str, out_dir: Path, ctx: Any
    ) -> dict[str, Any]:
        """Fine-tunes base_model on data_dir with unsloth; see `TrainingBackend.train_sft`.

        Raises:
            StageError: Without a CUDA GPU or unsloth, or for lora=none (use the hf backend).
        """
        check_available(ctx.device)
        if not params["lora"]:
            raise StageError(
                "sft: train.backend=unsloth trains LoRA adapters only (lora=none). "
                "Pick a lora option (e.g. lora=r16) or use train.backend=hf for a full fine-tune."
            )
        from unsloth import FastLanguageModel  # must come before trl/transformers

        from llmops.backends.hf import train_with_sft_trainer

        train = params["train"]
        qtype = params["quant"]["type"]
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base_model,
            max_seq_length=int(train["max_length"]),
            load_in_4bit=qtype in ("nf4", "fp4"),
            load_in_8bit=qtype == "int8",
            dtype=None,
            trust_remote_code=bool(params["model"]["trust_remote_code"]),
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = FastLanguageModel.get_peft_model(model, **peft_kwargs(params["lora"], train))
        return train_with_sft_trainer(model, tokenizer, params, base_model, data_dir, out_dir, ctx,
                                      self.name)


BACKEND = UnslothBackend()
