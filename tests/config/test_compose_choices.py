"""Hydra builds the group-choices map of a defaults list only where the list interpolates one
(llmops.config.hydra.compose._choices_on_demand), and its copy of the config repository shares
the ConfigStore (_store_not_copied): the compositions are Hydra's own."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from llmops.config.hydra import compose as compose_module
from llmops.config.hydra.source import DEFAULT, Source

POINTS = [
    [],
    ["model=qwen3b", "hardware=a100_40g", "lora=r64", "quant=nf4"],
    ["train=sft_dpo", "deploy=ollama", "monitor=default", "release=default"],
    ["data=hf", "data.hf_id=tatsu-lab/alpaca", "data.format=alpaca", "eval=lm_eval"],
    ["hydra/launcher=joblib", "tracking=wandb", "distributed=ddp", "hardware=8xa100_80g"],
]


def _yaml(overrides: list[str], source: Source = DEFAULT) -> str:
    return OmegaConf.to_yaml(compose_module._hydra_compose(list(overrides), source))


@pytest.mark.parametrize("overrides", POINTS, ids=lambda o: " ".join(o) or "default")
def test_the_composition_is_the_one_hydra_makes_with_every_map_and_its_own_store(monkeypatch,
                                                                                 overrides):
    ours = _yaml(overrides)
    for shortcut in ("_choices_on_demand", "_store_not_copied"):  # each one left out
        with monkeypatch.context() as m:
            m.setattr(compose_module, shortcut, contextlib.nullcontext)
            assert ours == _yaml(overrides), shortcut


def _store_yaml() -> dict[str, str]:
    """Every config the ConfigStore holds, as YAML, by its path."""
    found: dict[str, str] = {}

    def walk(node: dict, path: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{path}{name}/")
            else:
                found[f"{path}{name}"] = OmegaConf.to_yaml(value.node)

    walk(ConfigStore.instance().repo, "")
    return found


def test_composing_shares_the_store_only_while_it_composes_and_leaves_it_as_it_was():
    store = ConfigStore.instance()
    before = _store_yaml()
    with compose_module._store_not_copied():
        assert copy.deepcopy(store) is store
        with compose_module._store_not_copied():  # within a composition: left as it is
            assert copy.deepcopy(store) is store
        assert copy.deepcopy(store) is store
    for overrides in POINTS:  # a composition reads the store, and changes nothing in it
        compose_module._hydra_compose(list(overrides), DEFAULT)
    assert "__deepcopy__" not in vars(type(store))
    assert copy.deepcopy(store) is not store
    assert _store_yaml() == before


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_defaults_list_that_interpolates_choices_still_resolves(tmp_path):
    """Hydra's documented form: `- dataset_model: ${dataset}_${model}` picks the option named by
    the other groups' choices, the user's overrides included."""
    _write(tmp_path, {
        "config.yaml": "defaults:\n  - dataset: imagenet\n  - model: alexnet\n"
                       "  - dataset_model: ${dataset}_${model}\n  - _self_\n",
        "dataset/imagenet.yaml": "name: imagenet\n",
        "dataset/cifar.yaml": "name: cifar\n",
        "model/alexnet.yaml": "name: alexnet\n",
        "model/resnet.yaml": "name: resnet\n",
        "dataset_model/imagenet_alexnet.yaml": "batch: 256\n",
        "dataset_model/cifar_resnet.yaml": "batch: 128\n",
    })
    source = Source(config_path=str(tmp_path), config_name="config")
    cfg = compose_module._hydra_compose([], source)
    assert (cfg.dataset.name, cfg.model.name, cfg.dataset_model.batch) == (
        "imagenet", "alexnet", 256)
    cfg = compose_module._hydra_compose(["dataset=cifar", "model=resnet"], source)
    assert cfg.dataset_model.batch == 128
    assert cfg.hydra.runtime.choices.dataset_model == "cifar_resnet"
