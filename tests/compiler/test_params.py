"""One source per fact: the compiled params reach the trainers unchanged, and nothing restates them.

From config to PEFT's LoraConfig in both backends (r, alpha as a float, dropout, target modules),
quant settings to bitsandbytes, the tiny model built as conf/model/tiny.yaml says, option files
that omit a key refused, and every torch-free module imported without a heavy library.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys

import pytest

from llmops.backends import hf, unsloth

ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# lora.r=4 lora.alpha=0.5: alpha/r = 1/8 passes the ratio rule, so it must train as written.
FRACTIONAL = ("lora=r16", "lora.r=4", "lora.alpha=0.5", "lora.dropout=0.1")
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "wandb", "unsloth")
PURE = ("llmops.cli", "llmops.config.schema", "llmops.config.validate", "llmops.compiler.compile",
        "llmops.core.plan", "llmops.errors", "llmops.backends", "llmops.config.rules.compute")


@pytest.mark.parametrize(("targets", "expected"), [
    ("all-linear", ALL_LINEAR),
    ("[q_proj,v_proj]", {"q_proj", "v_proj"}),
])
def test_hf_backend_builds_peft_lora_config_from_the_compiled_params(
        targets, expected, tiny_base, stage_params):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    params = stage_params("sft", *FRACTIONAL, f"lora.target_modules={targets}")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base)),
                           hf.lora_config(params["lora"]))
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 0.5, 0.1)
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if hasattr(module, "lora_A")}
    assert wrapped == expected
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == 0.125


@pytest.mark.parametrize(("targets", "checkpointing", "expected"), [
    ("all-linear", "false", (sorted(ALL_LINEAR), False)),
    ("[q_proj,v_proj]", "true", (["q_proj", "v_proj"], "unsloth")),
])
def test_unsloth_backend_passes_the_compiled_params_to_get_peft_model(
        targets, checkpointing, expected, stage_params):
    params = stage_params("sft", *FRACTIONAL, f"lora.target_modules={targets}", "train.seed=7",
                          f"train.gradient_checkpointing={checkpointing}")
    kwargs = unsloth.peft_kwargs(params["lora"], params["train"])
    assert kwargs["r"] == 4 and kwargs["lora_alpha"] == 0.5 and kwargs["lora_dropout"] == 0.1
    assert (sorted(kwargs["target_modules"]), kwargs["use_gradient_checkpointing"]) == expected
    assert kwargs["random_state"] == 7 and kwargs["bias"] == "none"


def test_fractional_alpha_trains_an_adapter_that_changes_the_output(
        tiny_base, sft_data, tmp_path, stage_params):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.core.context import StageContext
    from llmops.stages import sft

    params = stage_params("sft", *FRACTIONAL, "train.backend=hf", "train.learning_rate=1e-2",
                          "train.max_steps=2", "train.batch_size=8", "train.grad_accum=1",
                          "train.max_length=256")
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t"))
    report = sft.run(params, {"data": sft_data, "base": tiny_base}, tmp_path, ctx)
    assert report["steps"] == 2 and report["lora"]["alpha"] == 0.5
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (4, 0.5)

    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    ids = tok("<|im_start|>user\nList my open tasks.<|im_end|>\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    with torch.inference_mode():
        before = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        after = tuned(**ids).logits
    assert float((after - before).abs().max()) > 1e-5, "the adapter is a no-op (lora_alpha 0?)"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("double_quant", [True, False])
def test_training_and_eval_load_the_quantized_base_as_configured(double_quant, stage_params):
    import torch

    from llmops.stages.eval_base import eval_quant

    overrides = ("quant=nf4", f"quant.double_quant={str(double_quant).lower()}")
    train = hf.quantization_config(stage_params("sft", *overrides)["quant"], "sft")
    assert train.load_in_4bit and train.bnb_4bit_quant_type == "nf4"
    assert train.bnb_4bit_use_double_quant is double_quant
    assert train.bnb_4bit_compute_dtype == torch.float32  # auto on a CPU
    from llmops.core.context import StageContext

    on_gpu = StageContext(run_dir=".", device="cuda")
    quant = eval_quant(stage_params("eval_base", *overrides), on_gpu)
    assert hf.quantization_config(quant, "eval").to_dict() == train.to_dict()


@pytest.mark.parametrize("key", [
    "lora.enabled", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules",
    "quant.type", "quant.double_quant", "quant.compute_dtype",
    "model.pretrain.legacy_tools", "model.pretrain.include_refusals", "model.pretrain.n_examples",
    "model.pretrain.steps", "model.pretrain.batch_size", "model.pretrain.learning_rate",
])
def test_an_option_file_without_a_key_is_refused_not_given_a_second_default(key):
    from llmops.cli import check
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check([f"~{key}"])
    [problem] = err.value.problems
    assert problem.key == key
    assert problem.message.startswith(f"is required but not set. Set it, e.g. {key}=...")


def test_tiny_base_is_built_as_tiny_yaml_says(tiny_base, tmp_path, stage_params):
    from transformers import AutoConfig, AutoTokenizer

    from llmops.core.context import StageContext
    from llmops.stages import tiny_base as base_stage

    assert AutoConfig.from_pretrained(str(tiny_base)).tie_word_embeddings is True  # tiny.yaml
    planned = stage_params("compute")["model"]["params"]  # what compute planning assumes
    assert json.loads((tiny_base / "base_report.json").read_text())["parameters"] == planned
    params = stage_params("base", "model.tie_embeddings=false", "model.context_length=256",
                          "train.max_length=256", "data.max_length=256",
                          "model.pretrain.n_examples=32", "model.pretrain.steps=2")
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t"))
    report = base_stage.run(params, {}, tmp_path, ctx)
    config = AutoConfig.from_pretrained(str(tmp_path))
    assert config.tie_word_embeddings is False
    assert config.max_position_embeddings == 256
    assert AutoTokenizer.from_pretrained(str(tmp_path)).model_max_length == 256
    assert report["pretrain"] == params["pretrain"] and report["steps"] == 2


def test_torch_free_modules_load_no_heavy_library():
    """Imports every llmops module (found with pkgutil, so new ones are covered) in a fresh
    interpreter: the pure layers, and every other module, keep heavy imports inside functions."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import llmops\n"
        "names = sorted(m.name for m in pkgutil.walk_packages(llmops.__path__, 'llmops.'))\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'modules': names, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(PURE) <= set(result["modules"])
    assert any(m.startswith("llmops.config.") for m in result["modules"])
    assert result["heavy"] == []
