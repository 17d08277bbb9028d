"""The option reference (`python -m llmops --options`) and the per-group bases of conf/."""

from __future__ import annotations

import subprocess
import sys

import llmops.conf
import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel

from llmops.cli.options import _UNSET, render, rows
from llmops.config.hydra.compose import compose
from llmops.config.hydra.groups import group_options, groups
from llmops.config.schema import AppConfig
from llmops.errors import ConfigError


def _schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf key of the schema (a sub-model's keys, not the sub-model itself)."""
    from llmops.cli.options import _submodel

    out = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        sub = _submodel(field.annotation)
        out |= _schema_keys(sub, f"{key}.") if sub is not None else {key}
    return out


def test_every_schema_field_is_listed_with_its_composed_default():
    composed = OmegaConf.to_container(compose([]), resolve=False)
    listed = {r.key: r for r in rows()}
    # model.pretrain is a mapping only under model=tiny (the default); elsewhere it is null.
    assert _schema_keys(AppConfig) - {"model.pretrain"} <= set(listed)
    for key, row in listed.items():
        node: object = composed
        for part in key.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is not _UNSET:
            assert row.default == node, key
        assert row.help, f"{key} has no description in the schema"
        assert row.type


def test_reference_names_types_defaults_and_allowed_values():
    text = render(["lora", "quant"])
    assert "| `lora.dropout` | float | `0.05` | ≥ 0, < 1 | Dropout on the adapter input. |" in text
    assert "| `quant.type` | choice | `none` | none, nf4, int8 |" in text
    assert "lora=OPTION, one of: none, r16 (default), r32, r64, r8." in text
    assert "_base" not in text


def test_options_command_prints_one_group_and_refuses_an_unknown_one():
    r = subprocess.run([sys.executable, "-m", "llmops", "--options", "train"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "`train.epochs` | float | `3`" in r.stdout and "`lora.r`" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "llmops", "--options", "lroa"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "'lroa' is not a config group. Did you mean 'lora'?" in r.stderr


@pytest.mark.parametrize("group", groups())
def test_a_base_is_no_option(group):
    assert not any(o.startswith("_") for o in group_options(group))


def test_options_inherit_their_group_base():
    assert llmops.conf.load("lora", "r8") == {**llmops.conf.load("lora", "_base"), "r": 8,
                                              "alpha": 16}
    train = {o: llmops.conf.load("train", o) for o in group_options("train")}
    assert {t["epochs"] for o, t in train.items() if o != "none"} == {3}
    assert train["none"]["epochs"] == 1
    assert train["sft_dpo"]["dpo"] == train["dpo"]["dpo"] and "dpo" not in train["sft"]


def test_hydra_composes_with_libyaml_as_with_omegaconfs_parser(tmp_path, monkeypatch):
    """compose has OmegaConf (so Hydra) parse with llmops.conf's loader: the same composition,
    and a file libyaml refuses fails with OmegaConf's own error, word for word."""
    import contextlib

    import omegaconf._utils
    import yaml
    from omegaconf import OmegaConf

    from llmops.config.hydra import compose as composing

    exact = omegaconf._utils.get_yaml_loader
    bad = tmp_path / "bad.yaml"
    bad.write_text("r: 8\nalpha: [1, 2\n")
    for read, where in ((lambda: OmegaConf.load(bad), f'in "{bad}", line 2'),
                        (lambda: OmegaConf.create(bad.read_text()), "<unicode string>")):
        with pytest.raises(yaml.YAMLError) as want:
            read()
        with llmops.conf.libyaml(), pytest.raises(yaml.YAMLError) as got:
            read()
        assert str(got.value) == str(want.value) and where in str(got.value)
        assert "expected ',' or ']', but got '<stream end>'" in str(got.value)  # not libyaml's
    assert omegaconf._utils.get_yaml_loader is exact
    overrides = ["deploy=openai", "train=sft_dpo", "eval=lm_eval"]
    fast = OmegaConf.to_yaml(composing.compose_to_keep(overrides))
    monkeypatch.setattr(composing, "libyaml", contextlib.nullcontext)
    assert OmegaConf.to_yaml(composing.compose_to_keep(overrides)) == fast


def test_libyaml_writes_what_omegaconfs_dumper_writes():
    """Inside llmops.conf.libyaml, OmegaConf.to_yaml (Hydra's .hydra/*.yaml) writes through
    libyaml the very text PyYAML's emitter writes: compositions, and values whose quoting or
    folding is delicate (text that reads as a bool or a number, long, multi-line, unicode)."""
    import omegaconf.omegaconf
    from omegaconf import OmegaConf

    from llmops.config.hydra.compose import compose_to_keep

    tricky = OmegaConf.create({
        "yes": "yes", "off": "off", "int": "12", "float": "1e-3", "dot": ".5", "null": "null",
        "empty": "", "space": " lead and trail ", "colon": "a: b", "hash": "x # y",
        "long": "word " * 60, "lines": "one\ntwo\n\nthree\n", "tab": "a\tb",
        "unicode": "ünïcödé ✓ 日本語", "quote": "it's \"quoted\"", "star": "*", "dash": "- x",
        "list": [1, 2.5, True, None, "x"], "nested": {"a": {"b": [{"c": "${oc.env:HOME}"}]}},
        "missing": "???", "interp": "${seed}", "bigint": 2**70, "neg": -0.0, "sci": 1e-30,
    })
    configs = [tricky] + [compose_to_keep(ov) for ov in
                          ([], ["deploy=openai", "train=sft_dpo", "eval=lm_eval"],
                           ["model=qwen3b", "quant=nf4", "monitor=default", "release=default"])]
    exact = omegaconf.omegaconf.get_omega_conf_dumper
    for cfg in configs:
        want = OmegaConf.to_yaml(cfg)
        with llmops.conf.libyaml():
            assert omegaconf.omegaconf.get_omega_conf_dumper is not exact
            got = OmegaConf.to_yaml(cfg)
        assert got == want
    assert omegaconf.omegaconf.get_omega_conf_dumper is exact
    assert OmegaConf.to_container(OmegaConf.create(got)) == OmegaConf.to_container(cfg)


def test_option_files_read_as_omegaconf_reads_them(tmp_path):
    """llmops.conf parses with libyaml where it can, under OmegaConf's YAML rules."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    files = sorted(llmops.conf.FOLDER.glob("**/*.yaml"))
    for path in files:
        with open(path, encoding="utf-8") as f:
            expected = yaml.load(f, Loader=get_yaml_loader()) or {}  # noqa: S506
        assert repr(llmops.conf._read(path)) == repr(expected), path
    twice = tmp_path / "twice.yaml"
    twice.write_text("r: 8\nalpha: 1e-3\nr: 16\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key r"):
        llmops.conf._read(twice)
    twice.write_text("r: 8\nalpha: 1e-3\nwhen: 2024-01-01\n")
    llmops.conf._read.cache_clear()
    assert llmops.conf._read(twice) == {"r": 8, "alpha": 0.001, "when": "2024-01-01"}
    assert len(files) > 50


# Keys whose schema default is a value of its own (no option states it for the others): a use case's
# figures (usecase=none's), eval=default's lm_eval settings, a one-GPU profile's node count.
_OWN_DEFAULTS = ("usecase.", "eval.lm_eval.", "hardware.interconnect_gbps", "hardware.num_nodes")


def test_no_default_is_stated_in_both_the_schema_and_a_yaml():
    """A field every option sets has no schema default; one that only some options set takes,
    under the others, the value an option's YAML states (schema._from), not a second literal."""
    from pydantic_core import PydanticUndefined

    from llmops.cli.options import _submodel

    def walk(model, path):
        for name, field in model.model_fields.items():
            key = [*path, field.alias or name]
            sub = _submodel(field.annotation)
            factory = field.default_factory
            from_yaml = factory is not None and "_from" in factory.__qualname__
            literal = not from_yaml and (field.default is not PydanticUndefined
                                         or factory is not None)
            if literal and sub is None and model.__name__ not in ("DataColumns", "DataTags"):
                yield key
            if sub is not None:
                yield from walk(sub, key)

    twice = []
    for key in walk(AppConfig, []):
        dotted = ".".join(key)
        if dotted.startswith(_OWN_DEFAULTS):
            continue
        for option in group_options(key[0]):
            node: object = llmops.conf.load(key[0], option)
            for part in key[1:]:
                node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
            if node is not _UNSET and node != "???":
                twice.append(f"{dotted} ({key[0]}={option})")
    assert not twice, f"defaults stated in schema.py and a YAML: {twice}"


def test_a_key_named_with_its_group_prefix_gets_the_key():
    """PEFT's names (lora_dropout, lora_r) need no alias table: the group's prefix is stripped."""
    from llmops.errors import ConfigError

    for typed, meant in (("lora.lora_dropout", "lora.dropout"), ("lora.lora_r", "lora.r"),
                         ("train.train_lr", "train.learning_rate")):
        with pytest.raises(ConfigError) as info:
            compose([f"{typed}=1"])
        (problem,) = info.value.problems
        assert problem.message.startswith(f"unknown key. Did you mean '{meant}'?"), problem


@pytest.mark.parametrize("group, base", sorted(
    (p.parent.name, p.stem) for p in llmops.conf.FOLDER.glob("*/_*.yaml")))
def test_a_groups_base_is_refused_as_an_option_naming_the_options(group, base):
    with pytest.raises(ConfigError) as e:
        compose([f"{group}={base}"])
    (problem,) = e.value.problems
    assert problem.key == group and "not an option" in problem.message
    assert all(o in problem.message for o in group_options(group))
    assert base not in group_options(group)
