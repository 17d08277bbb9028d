"""Hydra builds the group-choices map of a defaults list only where the list interpolates one
(llmops.config.hydra.compose._choices_on_demand), its copy of the config repository shares
the ConfigStore (_store_not_copied), and OmegaConf re-parents each tree merged into once, when
composing ends (_roots_reparented_once): the compositions are Hydra's own, node for node."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from llmops.config.hydra import compose as compose_module
from llmops.config.hydra.source import DEFAULT, Source

POINTS = [
    [],
    ["model=qwen3b", "hardware=a100_40g", "lora=r64", "quant=nf4"],
    ["train=sft_dpo", "deploy=ollama", "monitor=default", "release=default"],
    ["data=hf", "data.hf_id=tatsu-lab/alpaca", "data.format=alpaca", "eval=lm_eval"],
    ["hydra/launcher=joblib", "tracking=wandb", "distributed=ddp", "hardware=8xa100_80g"],
]


SHORTCUTS = ("_choices_on_demand", "_store_not_copied", "_roots_reparented_once",
             "_configs_embedded_uncopied")


def _nodes(cfg: DictConfig) -> list[tuple]:
    """Every node of cfg, root first: its path, type and the flags set on it and in effect;
    fails naming a node whose parent is not the mapping or list that holds it."""
    rows: list[tuple] = []

    def walk(node, path: str) -> None:
        rows.append((path, type(node).__name__, dict(node._metadata.flags),
                     node._get_flag("struct"), node._get_flag("readonly")))
        content = node.__dict__["_content"] if isinstance(node, (DictConfig, ListConfig)) else ()
        items = (content.items() if isinstance(content, dict)
                 else enumerate(content) if isinstance(content, list) else ())
        for key, child in items:
            assert child._get_parent() is node, f"{path}.{key}: its parent is not {path or 'root'}"
            walk(child, f"{path}.{key}")

    walk(cfg, "")
    return rows


def _composed(overrides: list[str], source: Source = DEFAULT) -> tuple[str, list[tuple]]:
    cfg = compose_module._hydra_compose(list(overrides), source)
    return OmegaConf.to_yaml(cfg), _nodes(cfg)


@pytest.mark.parametrize("overrides", POINTS, ids=lambda o: " ".join(o) or "default")
def test_the_composition_is_the_one_hydra_makes_with_every_map_and_its_own_store(monkeypatch,
                                                                                 overrides):
    ours = _composed(overrides)
    for shortcut in SHORTCUTS:  # each one left out
        with monkeypatch.context() as m:
            m.setattr(compose_module, shortcut, contextlib.nullcontext)
            assert ours == _composed(overrides), shortcut


def test_a_users_config_with_lists_a_config_twice_and_interpolations_composes_the_same(
        monkeypatch, tmp_path):
    """A user's config tree: lists at the top and in groups (overridden and appended to), one
    option under two packages, interpolations across groups, a struct schema from _self_."""
    _write(tmp_path, {
        "config.yaml": "defaults:\n  - db@src: mysql\n  - db@dst: mysql\n  - model: big\n"
                       "  - _self_\ntags: [a, b]\nname: ${model.name}-${src.host}\n"
                       "steps: [{n: 1}, {n: 2}]\n",
        "db/_base.yaml": "host: localhost\nports: [1, 2]\nopts: {retry: 3}\n",
        "db/mysql.yaml": "defaults:\n  - _base\n  - _self_\nports: [3306]\n"
                         "opts: {timeout: 5}\n",
        "model/_base.yaml": "name: base\nlayers: [8, 8]\nlr: ${src.opts.retry}\n",
        "model/big.yaml": "defaults:\n  - _base\n  - _self_\nname: big\nlayers: [16]\n",
    })
    source = Source(config_path=str(tmp_path), config_name="config")
    points = [[], ["dst.host=remote", "+model.extra=[1,2]", "tags=[c]", "src.ports=[9]"]]
    for overrides in points:
        ours = _composed(overrides, source)
        for shortcut in SHORTCUTS:
            with monkeypatch.context() as m:
                m.setattr(compose_module, shortcut, contextlib.nullcontext)
                assert ours == _composed(overrides, source), (shortcut, overrides)
    cfg = compose_module._hydra_compose(points[1], source)
    assert (cfg.name, cfg.model.lr, list(cfg.src.ports), cfg.dst.host) == ("big-localhost", 3,
                                                                          [9], "remote")
    assert cfg.src.opts == {"retry": 3, "timeout": 5} and list(cfg.model.layers) == [16]


def test_merges_reparent_once_only_while_composing_and_a_list_at_the_root_as_before():
    from omegaconf.basecontainer import BaseContainer

    merge_with, re_parent = BaseContainer._merge_with, BaseContainer._re_parent
    with compose_module._roots_reparented_once():
        patched = BaseContainer._merge_with
        assert patched is not merge_with
        with compose_module._roots_reparented_once():  # within a composition: left as it is
            assert BaseContainer._merge_with is patched
        root = OmegaConf.create({"a": {"b": [1]}, "c": 1})
        root.merge_with({"a": {"b": [2, {"d": 3}]}, "e": [4]})
        _nodes(root)  # parents already right, before composing ends
        items = OmegaConf.create([{"x": 1}])
        items.merge_with([{"y": 2}, [3]])  # a list at the root: re-parented by its merge
        _nodes(items)
    assert (BaseContainer._merge_with, BaseContainer._re_parent) == (merge_with, re_parent)
    assert OmegaConf.to_container(root) == {"a": {"b": [2, {"d": 3}]}, "c": 1, "e": [4]}
    _nodes(root)


def test_configs_are_embedded_uncopied_only_while_composing():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    names = ("_compose_config_from_defaults_list", "_load_single_config", "_embed_result_config")
    before = {name: vars(ConfigLoaderImpl)[name] for name in names}
    with compose_module._configs_embedded_uncopied():
        during = {name: vars(ConfigLoaderImpl)[name] for name in names}
        assert all(during[name] is not before[name] for name in names)
        with compose_module._configs_embedded_uncopied():  # within a composition: as it is
            assert {name: vars(ConfigLoaderImpl)[name] for name in names} == during
    assert all(vars(ConfigLoaderImpl)[name] is before[name] for name in names)


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
