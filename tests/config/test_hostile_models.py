"""Hostile model folders and chat templates at compile time (issue 20): a config.json with facts of
the wrong type, nested 100,000 deep or huge; custom code (auto_map); a template that raises or
loops. Each is exit 2 naming the key and the file or the bound, never a traceback.

The command-line checks of a local folder or template run `python -m llmops` as llmops.cli.main in
this process (cli_here.llmops_here: a pre-flight verdict, no process of its own needed); those
that ask a hub (HF_ENDPOINT, read when huggingface_hub is imported) start a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_here import llmops_here

from llmops.errors import ConfigError

SMALL = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 1000, "max_position_embeddings": 4096, "tie_word_embeddings": True}
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if m.tool_calls %}"
            "{{ m.tool_calls | tojson }}{% endif %}{% endfor %}")


def _folder(tmp_path: Path, config: dict | str, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


def _problems(compose_plan, *overrides: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        compose_plan(["model=hub", *overrides, "dry_run=true"])
    return {p.key: p.message for p in info.value.problems}


# ---- config.json facts of the wrong type: the fact and the file named ----

FIX = "Set it as an override (e.g. model.{key}=...) from the model card."


@pytest.mark.parametrize(("change", "key", "why"), [
    ({"num_key_value_heads": "two"}, "num_kv_heads",
     "it has no positive integer 'num_key_value_heads' (got 'two')"),
    ({"num_key_value_heads": -2}, "num_kv_heads",
     "it has no positive integer 'num_key_value_heads' (got -2)"),
    ({"num_hidden_layers": [2]}, "num_layers",
     "it has no positive integer 'num_hidden_layers' (got [2])"),
    ({"hidden_size": 0}, "hidden_size", "it has no positive integer 'hidden_size' (got 0)"),
    ({"vocab_size": 1000.5}, "vocab_size",
     "it has no positive integer 'vocab_size' (got 1000.5)"),
    ({"max_position_embeddings": True}, "context_length",
     "it has no positive integer 'max_position_embeddings' (got True)"),
    ({"tie_word_embeddings": "yes"}, "tie_embeddings",
     "config.json's 'tie_word_embeddings' must be true or false (got 'yes')"),
    ({"model_type": {"nested": "dict"}}, "family", "it names no model_type"),
])
def test_a_config_fact_of_the_wrong_type_names_the_fact_and_the_file(
        compose_plan, tmp_path, change, key, why):
    folder = _folder(tmp_path, {**SMALL, **change})
    problems = _problems(compose_plan, f"model.hub_id={folder}")
    where = folder / "config.json"
    assert problems[f"model.{key}"] == f"cannot be derived from {where}: {why}. " + FIX.format(
        key=key)
    assert all(str(where) in message for message in problems.values()), problems


@pytest.mark.parametrize(("change", "why"), [
    ({"head_dim": "x"}, "config.json has no positive integer 'head_dim' (got 'x')"),
    ({"attention_bias": "false"}, "config.json's 'attention_bias' must be true or false "
                                  "(got 'false')"),
    ({"num_key_value_heads": [1, 2]}, "config.json has no positive integer "
                                      "'num_key_value_heads' (got [1, 2])"),
])
def test_a_key_that_only_the_parameter_count_reads_is_checked_too(
        compose_plan, tmp_path, change, why):
    folder = _folder(tmp_path, {**SMALL, **change})
    problems = _problems(compose_plan, f"model.hub_id={folder}")
    assert problems["model.params"] == (f"cannot be derived from {folder / 'config.json'}: "
                                        f"{why}. " + FIX.format(key="params"))


@pytest.mark.parametrize("depth", [65, 100_000])
def test_a_config_json_nested_too_deep_is_refused_before_parsing(compose_plan, tmp_path, depth):
    text = json.dumps(SMALL)[:-1] + ', "rope_scaling": ' + "[" * depth + "]" * depth + "}"
    folder = _folder(tmp_path, text)
    problems = _problems(compose_plan, f"model.hub_id={folder}")
    assert problems["model.hub_id"] == (
        f"{folder / 'config.json'} is nested deeper than limits.json_depth=64; a config.json "
        "is a few levels deep. Re-save the model or re-download config.json.")


def test_a_huge_config_json_is_refused_without_reading_it(compose_plan, tmp_path):
    text = json.dumps({**SMALL, "padding": "x" * 4000})
    folder = _folder(tmp_path, text)
    problems = _problems(compose_plan, f"model.hub_id={folder}", "limits.row_bytes=2048")
    assert problems["model.hub_id"] == (
        f"{folder / 'config.json'} is {len(text)} bytes, larger than limits.row_bytes=2048; a "
        "config.json is a few kilobytes. Re-save the model or re-download config.json.")
    cfg, _ = compose_plan(["model=hub", f"model.hub_id={folder}", "dry_run=true"])
    assert cfg.model.num_layers == 2  # under the default bound it is read


def test_a_bad_config_json_exits_2_without_a_traceback(tmp_path):
    folder = _folder(tmp_path, {**SMALL, "num_key_value_heads": "two",
                                "rope_scaling": json.loads("[" * 60 + "]" * 60)})
    r = llmops_here("model=hub", f"model.hub_id={folder}", "dry_run=true", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert (f"model.num_kv_heads: cannot be derived from {folder / 'config.json'}: it has no "
            "positive integer 'num_key_value_heads' (got 'two')") in r.stderr


# ---- custom code: model.trust_remote_code=true, and what it means ----


@pytest.mark.parametrize("model_type", ["my_custom_lm", "hdata-test-arch"])
def test_custom_code_asks_for_trust_remote_code_and_says_what_it_runs(
        compose_plan, tmp_path, model_type):
    auto_map = {"AutoConfig": "configuration_custom.CustomConfig",
                "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    folder = _folder(tmp_path, {**SMALL, "model_type": model_type, "auto_map": auto_map})
    problems = _problems(compose_plan, f"model.hub_id={folder}")
    assert problems["model.trust_remote_code"] == (
        f"{folder / 'config.json'} names custom model code (auto_map: AutoConfig -> "
        "configuration_custom.CustomConfig, AutoModelForCausalLM -> "
        f"modeling_custom.CustomForCausalLM) for model_type '{model_type}', which transformers "
        "does not ship, so the model cannot load without it. model.trust_remote_code=true "
        "(+model.trust_remote_code=true on a preset) lets transformers import and run the "
        "Python files of that model repository on this machine: set it only for a repository "
        "you trust. Or use a model whose architecture transformers ships.")
    trusted = _problems(compose_plan, f"model.hub_id={folder}", "model.trust_remote_code=true")
    assert "model.trust_remote_code" not in trusted  # the facts it cannot count remain
    assert "model.params" in trusted


def test_custom_code_is_asked_for_when_every_fact_is_given(compose_plan, tmp_path):
    folder = _folder(tmp_path, {**SMALL, "model_type": "my_custom_lm",
                                "auto_map": {"AutoModelForCausalLM": "m.M"}})
    problems = _problems(compose_plan, "model=qwen0.5b", f"model.hub_id={folder}")
    assert list(problems) == ["model.trust_remote_code"]


def test_auto_map_for_an_architecture_transformers_ships_needs_no_trust(compose_plan, tmp_path):
    folder = _folder(tmp_path, {**SMALL, "auto_map": {"AutoModelForCausalLM": "m.M"}})
    cfg, _ = compose_plan(["model=hub", f"model.hub_id={folder}", "dry_run=true"])
    assert cfg.model.trust_remote_code is False and cfg.model.family == "qwen2"


# ---- a chat template at compile time: its own error, a bounded render ----


def _template_problems(compose_plan, tmp_path, text: str, *overrides: str) -> dict[str, str]:
    path = tmp_path / "chat.jinja"
    path.write_text(text)
    return _problems(compose_plan, "model=qwen0.5b", f"model.chat_template={path}",
                     "data=task_api", *overrides)


@pytest.mark.parametrize(("text", "error"), [
    ("{{ raise_exception('boom') }}", "boom"),
    ("{% for m in messages %}{{ m.content | nofilter }}{% endfor %}",
     "No filter named 'nofilter'. (line 1)"),
    ("{% for m in messages %}{{ m.content.no_such_method() }}{% endfor %}",
     "'str object' has no attribute 'no_such_method'"),
    ("{% for m in messages %}{{ m.content / 0 }}{% endfor %}",
     "TypeError: unsupported operand type(s) for /: 'str' and 'int'"),
    ("{% for m in messages %}{{ m.content }}{% endfor %",
     "expected token 'end of statement block', got '%' (line 1)"),
])
def test_a_template_that_raises_is_reported_with_its_own_message(
        compose_plan, tmp_path, text, error):
    problems = _template_problems(compose_plan, tmp_path, text)
    assert problems["model.chat_template"] == (
        f"'{tmp_path / 'chat.jinja'}' fails on a plain user/assistant chat: {error}. Fix the "
        "template, or use another (auto, a TRL family such as qwen2_5, or a .jinja path).")


def test_a_template_that_raises_only_on_tools_says_so_when_the_data_has_tools(
        compose_plan, tmp_path):
    text = ("{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tool role "
            "here') }}{% endif %}{{ m.content }}{% endfor %}")
    problems = _template_problems(compose_plan, tmp_path, text)
    assert problems["model.chat_template"].startswith(
        f"'{tmp_path / 'chat.jinja'}' cannot render tool calls (it raised: no tool role here), "
        "but the data has tools (data=task_api).")


LOOPS = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% for m in messages %}{% for a in range(99999) %}{% for b in range(99999) %}"
    "{{ '' }}{% endfor %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(x=0) %}{% for a in range(100000) %}{% for b in range(100000) %}"
    "{% set ns.x = ns.x + 1 %}{% endfor %}{% endfor %}{{ ns.x }}",
]


@pytest.mark.parametrize("text", LOOPS)
def test_a_template_that_loops_is_bounded_at_compile_time(compose_plan, tmp_path, text):
    start = time.monotonic()
    problems = _template_problems(compose_plan, tmp_path, text, "limits.template_seconds=0.5")
    assert time.monotonic() - start < 20
    assert problems["model.chat_template"] == (
        f"'{tmp_path / 'chat.jinja'}': rendering a three-message chat took longer than "
        "limits.template_seconds=0.5 (a loop that runs too long?). Fix the template, or raise "
        "limits.template_seconds.")


def test_a_dry_run_with_a_looping_template_exits_2_within_the_bound(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(LOOPS[0])
    start = time.monotonic()
    r = llmops_here("model=qwen0.5b", f"model.chat_template={path}", "limits.template_seconds=1",
                    "dry_run=true", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert time.monotonic() - start < 120
    assert "took longer than limits.template_seconds=1 " in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_a_template_file_that_is_not_text_is_a_config_error(compose_plan, tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_bytes(b"\xff\xfe\x00binary")
    problems = _problems(compose_plan, "model=qwen0.5b", f"model.chat_template={path}")
    assert problems["model.chat_template"].startswith(
        f"'{path}' cannot be read (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff")


HOSTILE_HUB_CONFIGS = {  # repository: (its config.json, what the problem says)
    "acme/deep": (b'{"model_type": "qwen2", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                  "nested deeper than limits.json_depth=64"),
    "acme/kv": (json.dumps({**SMALL, "num_key_value_heads": "two"}).encode(),
                "it has no positive integer 'num_key_value_heads' (got 'two')"),
}


def test_a_hostile_config_json_from_the_hub_exits_2(tmp_path):
    """One sweep over both repositories: its pre-flight reads each point's config.json from the
    hub and lists every problem, as a run of each would."""
    from fake_hub import FakeHub

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled"}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    repos = {repo: {"files": {"config.json": body}}
             for repo, (body, _) in HOSTILE_HUB_CONFIGS.items()}
    with FakeHub(repos) as hub:
        r = subprocess.run([sys.executable, "-m", "llmops", "-m", "model=hub",
                            f"model.hub_id={','.join(repos)}", "dry_run=true"], cwd=tmp_path,
                           env={**env, "HF_ENDPOINT": hub.url}, capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.startswith("Config is invalid ("), r.stderr[-2000:]
    for repo, (_, expected) in HOSTILE_HUB_CONFIGS.items():  # each point's own problem
        assert any(expected in line for line in r.stderr.splitlines()
                   if line.endswith(f"[sweep point: model.hub_id={repo}]")), (repo, r.stderr)
