"""`python -m llmops --options [GROUP ...]`: the reference of every option, generated.

Each key of the typed schema (llmops.config.schema.AppConfig) with its type, its default (the
value the default composition gives it, read from conf/: the primary config's option of each group
with the base it inherits), the values it allows and one line of help (the field's description).
Printed as a Markdown table per group, so README needs no list of its own. Imports no torch and
composes nothing with Hydra.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

_UNSET = object()


@dataclass(frozen=True)
class Row:
    """One key of the reference: `lora.r`, int, 16, "≥ 1, ≤ 1024", its help."""

    group: str
    key: str
    type: str
    default: Any
    allowed: str
    help: str


def _bounds(meta: Any) -> list[str]:
    out = []
    for m in meta:
        out += _bounds(getattr(m, "metadata", ()))  # a Field(ge=...) inside Annotated
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {value}")
        if getattr(m, "pattern", None):
            out.append(f"matches {m.pattern}")
    return out


def _describe(tp: Any) -> tuple[str, list[str]]:
    """Returns a type's name and what it allows: (int, ['≥ 1']), (choice, ['nf4, int8'])."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        name, allowed = _describe(args[0])
        return name, allowed + _bounds(args[1:])
    if origin is Literal:
        return "choice", [", ".join(str(a) for a in args)]
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        name = " | ".join(p[0] for p in parts) + (" | null" if type(None) in args else "")
        return name, [a for p in parts for a in p[1]]
    if origin in (list, tuple):
        inner, allowed = _describe(args[0]) if args else ("any", [])
        return f"list[{inner}]", allowed
    if origin is dict:
        inner, allowed = _describe(args[1])
        return f"mapping of {inner}", allowed
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.__name__, []
    return getattr(tp, "__name__", str(tp)), []


def _submodel(tp: Any) -> type[BaseModel] | None:
    """Returns the model a field holds (also when optional), else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        models = [a for a in get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1 and all(a is type(None) or a in models for a in get_args(tp)):
            return models[0]
    return None


def _lookup(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return _UNSET
        tree = tree[part]
    return tree


def _schema_default(field: Any) -> Any:
    """The value a field takes where the composition leaves it out (schema._from reads it from
    the YAML of an option that sets it), as plain data; _UNSET when it is required."""
    if field.default_factory is not None:
        value = field.default_factory()
        return value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
    return field.default if field.default is not PydanticUndefined else _UNSET


def _with(tree: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Returns a copy of tree with value at path (the mappings on the way copied or made)."""
    out = dict(tree)
    head, *rest = path
    out[head] = _with(out.get(head) or {}, rest, value) if rest else value
    return out


def _fields(model: type[BaseModel], prefix: list[str], defaults: Any) -> list[Row]:
    rows = []
    for name, field in model.model_fields.items():
        path = [*prefix, field.alias or name]
        sub = _submodel(field.annotation)
        if sub is not None and _lookup(defaults, path) is _UNSET:
            fallback = _schema_default(field)
            if isinstance(fallback, dict):  # e.g. deploy.ollama under deploy=local
                rows += _fields(sub, path, _with(defaults, path, fallback))
                continue
        if sub is not None and _lookup(defaults, path) not in (None, _UNSET):
            rows += _fields(sub, path, defaults)
            continue
        kind, allowed = _describe(field.annotation)
        allowed += _bounds(field.metadata)
        default = _lookup(defaults, path)
        if default is _UNSET:
            default = _schema_default(field)
        rows.append(Row(path[0] if len(path) > 1 else "", ".".join(path), kind, default,
                        ", ".join(allowed), field.description or ""))
    return rows


def default_values() -> dict[str, Any]:
    """Returns the default composition as plain data, interpolations unresolved (no Hydra)."""
    import llmops.conf

    primary = llmops.conf.load_primary()
    out = {k: v for k, v in primary.items() if k not in ("defaults", "hydra")}
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            (group, option), = entry.items()
            if group in llmops.conf.groups():
                out[group] = llmops.conf.load(group, str(option))
    return out


def rows() -> list[Row]:
    """Returns one row per key of the schema, in the schema's order."""
    from llmops.config.schema import AppConfig

    return _fields(AppConfig, [], default_values())


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        import json

        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(groups: list[str]) -> str:
    """Renders the reference of the groups (all when empty) as Markdown, one table per group."""
    import llmops.conf

    by_group: dict[str, list[Row]] = {}
    for row in rows():
        by_group.setdefault(row.group, []).append(row)
    chosen = groups or list(by_group)
    defaults = {k: v for e in llmops.conf.load_primary().get("defaults", [])
                if isinstance(e, dict) for k, v in e.items()}
    out = []
    for group in chosen:
        title = f"## {group}" if group else "## run-wide keys (conf/config.yaml)"
        out.append(title)
        options = llmops.conf.options(group) if group else []
        if options:
            listed = ", ".join(f"{o} (default)" if o == defaults.get(group) else o
                               for o in options)
            out.append(f"\n{group}=OPTION, one of: {listed}.")
        out += ["", "| key | type | default | allowed | help |", "|---|---|---|---|---|"]
        out += [f"| `{r.key}` | {_cell(r.type)} | `{_cell(_shown(r.default))}` | "
                f"{_cell(r.allowed)} | {_cell(r.help)} |" for r in by_group.get(group, [])]
        out.append("")
    return "\n".join(out)


def main(args: list[str]) -> int:
    """Prints the reference of the groups named in args (every group when none); returns the
    exit code (2 for a group that does not exist)."""
    from llmops.config.hints import did_you_mean
    from llmops.errors import EXIT_CONFIG

    known = [r.group for r in rows()]
    bad = [g for g in args if g not in known or not g]
    if bad:
        names = sorted(set(known) - {""})
        for group in bad:
            print(f"--options: '{group}' is not a config group.{did_you_mean(group, names)} "
                  f"Groups: {', '.join(names)}.", file=sys.stderr)
        return EXIT_CONFIG
    print(render(args))
    return 0
