"""llmops's config groups (installed as the package llmops.conf): one folder per group, one YAML
file per option.

A file whose name starts with "_" (lora/_base.yaml) is not an option: it is the shared base that the
group's options inherit through their defaults list (`defaults: [_base, _self_]`), each option then
stating only what differs. Pure: reads YAML with OmegaConf's YAML rules, imports nothing of llmops.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).parent


def options(group: str) -> list[str]:
    """Lists the options of a group, bases left out: options('lora') -> ['none', 'r16', ...]."""
    folder = FOLDER / group
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def load(group: str, name: str) -> dict[str, Any]:
    """Returns conf/<group>/<name>.yaml as Hydra composes it: the same-group configs its defaults
    list names merged in order (`_self_` where it stands, else last), interpolations unresolved.
    """
    own = dict(_read(FOLDER / group / f"{name}.yaml"))  # a copy: the read is cached
    defaults = list(own.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged: dict[str, Any] = {}
    for item in defaults:
        merged = _merge(merged, own if item == "_self_" else load(group, str(item)))
    return merged


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    """Reads one YAML file with OmegaConf's YAML rules (1e-3 is a float) but not its objects."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_loader()) or {}  # noqa: S506 - OmegaConf's safe loader


def yaml_loader() -> type:
    """Returns OmegaConf's YAML loader, parsing with libyaml where PyYAML has it (cached).

    A drop-in for omegaconf._utils.get_yaml_loader: OmegaConf's rules (its implicit types and
    constructors, its refusal of a key given twice) on a parser about eight times faster. YAML
    that libyaml refuses is parsed again by PyYAML's own parser, which OmegaConf uses, so a bad
    file fails with the very error OmegaConf gives (libyaml words some errors differently).
    """
    return _loader()


@functools.cache
def _loader() -> type:
    import io

    import yaml
    from omegaconf._utils import get_yaml_loader

    rules = get_yaml_loader()
    try:
        from yaml.cyaml import CParser
    except ImportError:  # PyYAML built without libyaml
        return rules  # type: ignore[no-any-return]
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    class _Named(io.StringIO):
        name = "<file>"

    class Loader(CParser, rules):  # type: ignore[misc,valid-type]
        def __init__(self, stream: Any) -> None:  # as yaml.CSafeLoader's, keeping the text
            self._text = stream.read() if hasattr(stream, "read") else stream
            self._name = getattr(stream, "name", None)
            CParser.__init__(self, self._text)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        def get_single_data(self) -> Any:
            try:
                return super().get_single_data()
            except yaml.YAMLError:
                pass
            again: Any = self._text
            if self._name is not None:  # the file's name in the error's marks, as OmegaConf's
                again = _Named(self._text if isinstance(self._text, str)
                               else self._text.decode("utf-8"))
                again.name = self._name
            return yaml.load(again, Loader=rules)  # noqa: S506 - OmegaConf's safe loader

    return Loader


@functools.cache
def yaml_dumper() -> type:
    """Returns OmegaConf's YAML dumper, writing with libyaml where PyYAML has it (cached).

    A drop-in for omegaconf._utils.get_omega_conf_dumper: OmegaConf's representers (text that
    would read back as a bool or a number is quoted) on libyaml's emitter, about three times
    faster than PyYAML's own, which OmegaConf uses; the text written is the same.
    """
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    rules = get_omega_conf_dumper()
    if not hasattr(yaml, "CDumper"):  # PyYAML built without libyaml
        return rules  # type: ignore[no-any-return]

    class Dumper(yaml.cyaml.CEmitter, rules):  # type: ignore[misc,valid-type,name-defined]
        __init__ = yaml.CDumper.__init__  # libyaml's emitter, OmegaConf's representers

    return Dumper


@contextlib.contextmanager
def libyaml() -> Iterator[None]:
    """Has OmegaConf, and so Hydra, read and write YAML through libyaml inside the block.

    OmegaConf.load (Hydra's reader of every config file) asks omegaconf._utils for its YAML
    loader at every call: here it gets the same rules parsed by libyaml (a fifth less time for a
    composition), and a bad file's error stays OmegaConf's own, word for word. OmegaConf.to_yaml
    (and so Hydra's .hydra/*.yaml) gets yaml_dumper: the same text, written about three times
    faster.
    """
    import omegaconf._utils
    import omegaconf.omegaconf

    loader, dumper = yaml_loader(), yaml_dumper()  # built on OmegaConf's own before the swap
    exact = omegaconf._utils.get_yaml_loader, omegaconf.omegaconf.get_omega_conf_dumper
    omegaconf._utils.get_yaml_loader = lambda: loader
    omegaconf.omegaconf.get_omega_conf_dumper = lambda: dumper
    try:
        yield
    finally:
        omegaconf._utils.get_yaml_loader, omegaconf.omegaconf.get_omega_conf_dumper = exact


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merges as OmegaConf does: mappings key by key, anything else replaced, and `???` (a
    required value) never replacing a value that is there."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value != "???" or key not in out:
            out[key] = copy.deepcopy(value)
    return out


def groups() -> list[str]:
    """Lists the config groups: the folders here but hydra/ (Hydra's own, e.g. launchers)."""
    return sorted(p.name for p in FOLDER.iterdir()
                  if p.is_dir() and not p.name.startswith("_") and p.name != "hydra")


def load_primary() -> dict[str, Any]:
    """Returns the primary config (config.yaml) as plain data, interpolations unresolved."""
    return copy.deepcopy(_read(FOLDER / "config.yaml"))
