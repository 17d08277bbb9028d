"""The hint for an override of a key the user's composition does not have.

Computed from the user's own composition (the options they chose, not the defaults), it names the
full key they can paste (`lora.r`, not `r`). A key that the schema knows but the chosen option does
not set (`tracking.project` under tracking=none) says which options set it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llmops.config.hints import closest
from llmops.config.hydra.groups import group_options, groups
from llmops.config.validate import schema_fields


def _override_with(culprit: str | None, key: str, fixed: str) -> str:
    """Rewrites the override the user typed with the fixed key ('lora.rr=3' -> 'lora.r=3')."""
    if not culprit:
        return f"{fixed}=..."
    m = re.match(r"^([+~]*)([^=@]+)(.*)$", culprit)
    return f"{m.group(1)}{fixed}{m.group(3)}" if m and m.group(2) == key else f"{fixed}=..."


def _sets(group: str, option: str, path: Sequence[str]) -> bool:
    """Says whether an option (with the base it inherits) sets the key path."""
    import llmops.conf

    node: Any = llmops.conf.load(group, option)
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def unknown_key_hint(key: str, culprit: str | None, cfg: Any) -> str:
    """Suggests the key meant by an override of a key that the composition `cfg` does not have.

    Args:
        key: The dotted key Hydra could not override, e.g. 'lora.rr'.
        culprit: The override that named it, e.g. 'lora.rr=3'.
        cfg: The user's composition without that override (with its hydra node, if any).
    """
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return ""
        keys = [str(k) for k in node.keys()]
        if part in keys:
            node = node._get_node(part)
            continue
        under = ".".join(parts[:i])
        if i == 0:
            keys = sorted(set(keys) | set(groups()))
        listed = f" Keys allowed {f'under {under!r}' if under else 'at the top level'}: " \
                 f"{', '.join(sorted(keys))}."
        match = closest(part, keys)
        if match:
            return f" Did you mean '{'.'.join([*parts[:i], match, *parts[i + 1:]])}'?{listed}"
        match = closest(part, [f for f in schema_fields(parts[:i]) if f not in keys])
        if not match:
            return listed
        fixed = ".".join([*parts[:i], match, *parts[i + 1:]])
        group = parts[0]
        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
        setters = [o for o in group_options(group) if _sets(group, o, [*parts[1:i], match])]
        options = " or ".join(f"{group}={o}" for o in setters)
        chosen = f"{group}={choice}" if choice else "the chosen option"
        # The key is spelled right but belongs to other options: no "did you mean" the same key.
        lead = f" {chosen} does not set {key!r}:" if fixed == key else \
            f" Did you mean '{fixed}'? {chosen} does not set it:"
        return (f"{lead} "
                f"{f'choose {options}, or ' if options else ''}add it with "
                f"'+{_override_with(culprit, key, fixed).lstrip('+')}'.{listed}")
    return ""
