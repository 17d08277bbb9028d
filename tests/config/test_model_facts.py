"""model=hub: the planner's architecture facts read from a model's config.json.

Each preset's facts are checked against what derivation gives from that model's published
config.json, and every parameter count against transformers' own model built on the meta device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub

from llmops.errors import ConfigError
from llmops.planning.architecture import ARCHITECTURES, count_params

FACTS = ("family", "chat_template", "num_layers", "hidden_size", "intermediate_size",
         "num_attention_heads", "num_kv_heads", "vocab_size", "context_length", "tie_embeddings")

_QWEN = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
         "eos_token_id": 151645, "hidden_act": "silu", "initializer_range": 0.02,
         "max_position_embeddings": 32768, "model_type": "qwen2", "rms_norm_eps": 1e-06,
         "rope_theta": 1000000.0, "sliding_window": 32768, "torch_dtype": "bfloat16",
         "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False}
_LLAMA = {"architectures": ["LlamaForCausalLM"], "attention_bias": False,
          "attention_dropout": 0.0, "bos_token_id": 128000,
          "eos_token_id": [128001, 128008, 128009],
          "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072,
          "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1, "rms_norm_eps": 1e-05,
          "rope_theta": 500000.0, "torch_dtype": "bfloat16", "use_cache": True,
          "vocab_size": 128256}


def _rope(factor: float) -> dict:
    return {"rope_scaling": {"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


def _qwen(h, i, layers, heads, kv, tie, vocab=151936, window=21, **extra) -> dict:
    return {**_QWEN, "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "tie_word_embeddings": tie,
            "vocab_size": vocab, "max_window_layers": window, **extra}


def _llama(h, i, layers, heads, tie, factor, **extra) -> dict:
    return {**_LLAMA, "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": 8, "tie_word_embeddings": tie,
            **_rope(factor), **extra}


# The config.json each preset's hub repo publishes (Qwen2.5-*-Instruct, Llama-3.x-*-Instruct).
PUBLISHED = {
    "qwen0.5b": _qwen(896, 4864, 24, 14, 2, True),
    "qwen1.5b": _qwen(1536, 8960, 28, 12, 2, True),
    "qwen3b": _qwen(2048, 11008, 36, 16, 2, True, window=70),
    "qwen7b": _qwen(3584, 18944, 28, 28, 4, False, vocab=152064, window=28,
                    sliding_window=131072),
    "llama1b": _llama(2048, 8192, 16, 32, True, 32.0, head_dim=64),
    "llama3b": _llama(3072, 8192, 28, 24, True, 32.0, head_dim=128),
    "llama8b": _llama(4096, 14336, 32, 32, False, 8.0),
}

# Small configs of each architecture, with the keys that change the count (biases, head_dim).
SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32064,
         "max_position_embeddings": 4096}
ARCH_CASES = {
    "llama": {"attention_bias": True, "mlp_bias": True},
    "mistral": {"head_dim": 24},
    "qwen2": {"tie_word_embeddings": True},
    "qwen3": {"head_dim": 32},
    "gemma": {"head_dim": 32},
    "gemma2": {"head_dim": 32},
    "phi3": {},
}


def _meta_count(config: dict) -> int:
    """Counts the parameters of transformers' own model for a config.json, on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(config["model_type"], **kwargs))
    return sum(p.numel() for p in model.parameters())


def _folder(tmp_path: Path, name: str, config: dict, **files: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for file, text in files.items():
        (folder / file.replace("__", ".")).write_text(text)
    return folder


def _problems(compose_plan, overrides) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        compose_plan(overrides)
    return {p.key: p.message for p in info.value.problems}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_each_preset_agrees_with_its_published_config_json(compose_plan, tmp_path, preset):
    config = PUBLISHED[preset]
    folder = _folder(tmp_path, preset, config)
    given, _ = compose_plan([f"model={preset}", "hardware=a100_80g", "dry_run=true"])
    derived, plan = compose_plan(["model=hub", f"model.hub_id={folder}", "hardware=a100_80g",
                                  "dry_run=true"])
    for key in FACTS:
        if key == "chat_template":  # config.json alone: the TRL template of its model_type,
            # the same format as the preset's (llama3_1 for llama3_2: a Llama 3 family template)
            assert derived.model.chat_template.split("_")[0] == given.model.chat_template.split(
                "_")[0]
            continue
        assert getattr(derived.model, key) == getattr(given.model, key), key
    assert abs(derived.model.params - given.model.params) / given.model.params < 0.005
    assert derived.model.params == _meta_count(config)
    assert plan.stage("compute").params["facts_from"]["num_layers"] == str(folder / "config.json")


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_each_architecture_counts_as_transformers_builds_it(model_type):
    config = {"model_type": model_type, **SMALL, **ARCH_CASES[model_type]}
    assert count_params(config) == _meta_count(config)


def test_overrides_win_over_config_json(compose_plan, tmp_path):
    folder = _folder(tmp_path, "m", PUBLISHED["qwen3b"])
    cfg, plan = compose_plan(["model=hub", f"model.hub_id={folder}", "model.num_layers=30",
                              "model.params=2500000000", "model.chat_template=llama3_2",
                              "hardware=a100_80g", "dry_run=true"])
    assert (cfg.model.num_layers, cfg.model.params, cfg.model.chat_template) == (
        30, 2_500_000_000, "llama3_2")
    assert cfg.model.hidden_size == 2048 and cfg.model.name == "m"
    sources = plan.stage("compute").params["facts_from"]
    assert not {"num_layers", "params", "chat_template"} & set(sources)


def test_the_template_file_decides_the_family_over_model_type(compose_plan, tmp_path):
    """A Llama-architecture folder that ships a ChatML template (with tools) trains on its own
    template (auto), not on the Llama 3 one its model_type would suggest."""
    from real_models import trl_template

    chatml = trl_template("qwen2_5.jinja")
    folder = _folder(tmp_path, "llama-chatml", PUBLISHED["llama1b"],
                     tokenizer_config__json=json.dumps({"chat_template": chatml}))
    cfg, plan = compose_plan(["model=hub", f"model.hub_id={folder}", "hardware=a100_80g",
                              "dry_run=true"])
    assert (cfg.model.family, cfg.model.chat_template) == ("llama", "auto")
    sources = plan.stage("compute").params["facts_from"]
    assert sources["chat_template"] == str(folder / "tokenizer_config.json")
    assert sources["params"] == f"{folder / 'config.json'} (llama arithmetic)"


def test_an_unknown_model_type_names_it_and_the_fix(compose_plan, tmp_path):
    config = {**SMALL, "model_type": "falcon", "tie_word_embeddings": False}
    folder = _folder(tmp_path, "falcon", config)
    where = folder / "config.json"
    known = ", ".join(ARCHITECTURES)
    assert _problems(compose_plan, ["model=hub", f"model.hub_id={folder}", "dry_run=true"]) == {
        "model.params": f"cannot be derived from {where}: model_type 'falcon' is not one llmops "
                        f"can count (known: {known}). Set it as an override (e.g. "
                        "model.params=...) from the model card.",
        "model.chat_template": f"cannot be derived from {where}: no chat template file was "
                               "found and model_type 'falcon' has no template family in llmops. "
                               "Set it as an override (e.g. model.chat_template=...) from the "
                               "model card.",
    }
    cfg, _ = compose_plan(["model=hub", f"model.hub_id={folder}", "model.params=7000000",
                           "model.chat_template=qwen2_5", "dry_run=true"])
    assert (cfg.model.family, cfg.model.params, cfg.model.num_layers) == ("falcon", 7_000_000, 2)


def test_a_folder_without_config_json_is_refused(compose_plan, tmp_path):
    assert _problems(compose_plan, ["model=hub", f"model.hub_id={tmp_path}", "dry_run=true"]) == {
        "model.hub_id": f"folder '{tmp_path}' has no config.json, so it is no saved model. "
                        "Point model.hub_id at a save_pretrained folder."}


def _llmops(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HOME": str(cwd / "hf"), **env}
    for key in [k for k, v in env.items() if v == ""]:
        del full[key]
    return subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_plans_a_local_folder_of_each_family(real_model, tmp_path):
    """One dry-run sweep (one process) over a local folder of each family."""
    from transformers import AutoModelForCausalLM

    folders = [real_model(family) for family in ("qwen2", "llama")]
    r = _llmops("-m", "model=hub", f"model.hub_id={','.join(map(str, folders))}", "dry_run=true",
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    reports = {}
    for report in (tmp_path / "sweep").glob("*/compute_plan.json"):
        read = json.loads(report.read_text())["facts_read"]
        reports[read["chat_template"]["from"]] = read
    assert len(reports) == 2
    for folder in folders:
        assert f"model facts from {folder}/config.json:" in r.stdout.replace("\n", "")
        read = reports[str(folder / "chat_template.jinja")]
        config = json.loads((folder / "config.json").read_text())
        weights = sum(p.numel()
                      for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
        assert read["params"] == {
            "value": weights, "from": f"{folder}/config.json ({config['model_type']} arithmetic)"}
        assert read["num_layers"]["value"] == config["num_hidden_layers"]
        assert read["vocab_size"]["value"] == config["vocab_size"]
        assert read["chat_template"] == {"value": "auto",
                                         "from": str(folder / "chat_template.jinja")}


def test_a_hub_id_reads_config_json_from_the_cache_or_one_hub_request(tmp_path):
    config = json.dumps(PUBLISHED["qwen1.5b"]).encode()
    with FakeHub({"acme/small": {"files": {"config.json": config}}}) as hub:
        r = _llmops("model=hub", "model.hub_id=acme/small", "dry_run=true", cwd=tmp_path,
                    HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="", TRANSFORMERS_OFFLINE="")
    assert r.returncode == 0, r.stderr[-2000:]
    url = f"{hub.url}/acme/small/resolve/main/config.json"
    assert f"model facts from {url}:" in r.stdout.replace("\n", "")
    assert {k: n for k, n in hub.requests.items() if "/resolve/" in k} == {
        "/acme/small/resolve/main/config.json": 1}  # just that file, once
    # Offline, the same id plans from a filled HF cache (its usual layout: refs + snapshots).
    snapshot = tmp_path / "hf" / "hub" / "models--acme--small" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(config)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    r = _llmops("model=hub", "model.hub_id=acme/small", "dry_run=true", cwd=tmp_path,
                HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"model facts from {snapshot / 'config.json'}:" in r.stdout.replace("\n", "")


def test_a_local_model_folder_is_part_of_the_fingerprint(compose_plan, real_model, tmp_path):
    """Retraining or editing a local model folder in place rebuilds what was built from it: the
    small files count by content, the weights by size and modification time."""
    import os
    import shutil

    folder = shutil.copytree(real_model("qwen2"), tmp_path / "m")
    args = ["model=hub", f"model.hub_id={folder}", "hardware=cpu", "dry_run=true"]

    def prints() -> dict[str, str]:
        return {s.name: s.fingerprint for s in compose_plan(args)[1].stages}

    first = prints()
    assert first == prints()
    (folder / "generation_config.json").write_text(
        (folder / "generation_config.json").read_text().replace("false", "true"))
    second = prints()
    assert second["sft"] != first["sft"] and second["data"] != first["data"]
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert prints()["sft"] != second["sft"]
