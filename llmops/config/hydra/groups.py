"""The packaged config groups: their folder (llmops.conf), their options, and the option files as
plain values for the planner (which sits below config and reads no YAML itself)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Groups the planner treats as optional: a fix that needs them is left out when they cannot be read.
_OPTIONAL = ("model", "hardware")


def conf_dir() -> Path:
    """Returns the folder that holds the config groups (inside the installed package)."""
    import llmops.conf

    return Path(llmops.conf.__file__).parent


def group_options(group: str) -> list[str]:
    """Lists the option names of a config group: group_options('lora') -> ['none', 'r16', ...].

    A group's base (`_base.yaml`, which its options inherit) is not an option.
    """
    import llmops.conf

    return llmops.conf.options(group)


def groups() -> list[str]:
    """Lists the config groups (folders under conf/; hydra/ holds Hydra's own, e.g. launchers)."""
    return sorted(p.name for p in conf_dir().iterdir()
                  if p.is_dir() and not p.name.startswith("_") and p.name != "hydra")


class OptionFiles(Mapping[str, Mapping[str, Any]]):
    """The option files of the packaged groups as plain values: files["quant"]["nf4"] is
    conf/quant/nf4.yaml with the base it inherits, as a dict (uninterpolated). What planning's
    fixes take as `catalog`.

    A group is read on first use and each lookup returns a fresh copy, so a caller may change what
    it gets. A group in _OPTIONAL (model presets, hardware profiles) that cannot be read is empty.
    """

    def __init__(self) -> None:
        self._read: dict[str, dict[str, Any]] = {}

    def __getitem__(self, group: str) -> Mapping[str, Any]:
        if group not in self._read:
            from yaml import YAMLError

            import llmops.conf

            try:
                self._read[group] = {name: llmops.conf.load(group, name)
                                     for name in llmops.conf.options(group)}
            except (OSError, YAMLError):
                if group not in _OPTIONAL:
                    raise
                self._read[group] = {}  # optional: the fixes that need it are left out
        return copy.deepcopy(self._read[group])

    def __iter__(self) -> Iterator[str]:
        return iter(groups())

    def __len__(self) -> int:
        return len(groups())


def option_files() -> OptionFiles:
    """Returns the packaged option files (each group read on first use): planning's `catalog`."""
    return OptionFiles()
