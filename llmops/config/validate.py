"""Validates a composed config against the schema and the cross-field rules, all at once."""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from llmops.config.hints import did_you_mean
from llmops.config.schema import AppConfig
from llmops.config.hydra.secrets import outbound_secret_problems
from llmops.errors import ConfigError, Problem

if TYPE_CHECKING:
    from llmops.config.resolve import Resolved

MISSING = "???"

# Extra advice appended to a schema error on these keys (`*`: any one key, e.g. a gate's name).
_SEED = "Seeds must fit numpy and torch: 0 ≤ seed < 2**32, e.g. {key}=0."
_HINTS = {
    "lora.r": "Use lora=none to train without LoRA.",
    "lora.target_modules": "List module names, e.g. lora.target_modules=[q_proj,v_proj], or use "
                           "lora.target_modules=all-linear.",
    "train.learning_rate": "Typical values: 1e-4 to 2e-4 for 1B+ models, 2e-3 for model=tiny.",
    "data.test_fraction": "The test split feeds evaluation; e.g. data.test_fraction=0.1.",
    "seed": _SEED, "train.seed": _SEED, "data.seed": _SEED,
    "store_dir": "Set store_dir=DIR (or the LLMOPS_STORE environment variable) to the folder "
                 "that keeps finished stages.",
    "model.hub_id": "Set model.hub_id=org/name (a Hugging Face model id or a local model folder), "
                    "or null for model=tiny.",
    "merge.weights": "One finite weight per adapter, e.g. merge.weights=[0.5,0.5].",
    "eval.gates.*.threshold": "Metrics are rates; e.g. {key}=0.8.",
    "eval.gates.*.tolerance": "Metrics are rates; e.g. {key}=0.02 allows a 2-point drop.",
}
_BOUNDS = {
    "greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤",
}
_KINDS = {
    "int_parsing": "an integer", "int_from_float": "an integer", "int_type": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping of keys to values", "model_type": "a mapping of keys to values",
}


def _field_model(path: list[str | int]) -> tuple[type[BaseModel] | None, Any]:
    """Walks the schema along a key path; returns (model owning the last key, its annotation)."""
    model: Any = AppConfig
    annotation: Any = AppConfig
    for part in path:
        owner = _as_model(annotation)
        if owner is not None:
            model = owner
            field = owner.model_fields.get(str(part))
            if field is None:
                return owner, None
            annotation = field.annotation
            continue
        annotation = _mapping_member(annotation)
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is dict and len(args) == 2:
            annotation = args[1]
            model = None
            continue
        return None, None
    return (model if isinstance(model, type) else None), annotation


def _mapping_member(annotation: Any) -> Any:
    """Returns the mapping member of a union (eval.gates: "auto" | {name: gate}), else itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg
            if typing.get_origin(inner) is dict:
                return inner
    return annotation


def schema_fields(path: list[str | int] | list[str]) -> list[str]:
    """Lists the keys the schema allows under a key path (['tracking'] -> backend, entity, ...)."""
    _, annotation = _field_model(list(path))
    owner = _as_model(annotation)
    return sorted(owner.model_fields) if owner else []


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _literal_values(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        values = _literal_values(arg)
        if values:
            return values
    return []


def _key_path(loc: tuple[Any, ...], data: Any) -> list[str | int]:
    """Keeps the parts of a pydantic error location that are real keys (drops union tags)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and path_is_union_tag(part):
            continue  # a tagged union's member (eval.gates), not a key
        elif isinstance(node, dict) and isinstance(part, str):
            path.append(part)  # a missing key
            break
        else:
            break
    return path


def path_is_union_tag(part: str) -> bool:
    """Tells whether a pydantic location part names a union member rather than a key."""
    return any(ch in part for ch in "[]") or part in {"str", "int", "float", "bool", "list"}


def _message(err: dict[str, Any], path: list[str | int]) -> str:
    kind = err["type"]
    value = err.get("input")
    key = ".".join(str(p) for p in path)
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = schema_fields(path[:-1])
        under = ".".join(str(p) for p in path[:-1])
        hint = did_you_mean(str(path[-1]), allowed, prefix=f"{under}." if under else "")
        return f"unknown key.{hint} Allowed keys here: {', '.join(allowed)}."
    if kind == "missing":
        return f"is required but not set. Set it, e.g. {key}=..."
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[kind]} {bound} (got {value!r})."
    if kind == "finite_number":
        allowed = _range(path)
        return f"must be a finite number{' ' + allowed if allowed else ''} (got {value!r})."
    if kind == "literal_error":
        _, annotation = _field_model(path)
        allowed = _literal_values(annotation) or [str(ctx.get("expected", ""))]
        return (
            f"'{value}' is not one of {', '.join(allowed)}.{did_you_mean(str(value), allowed)}"
        )
    if kind in _KINDS:
        _, annotation = _field_model(path)
        members = typing.get_args(annotation)
        kinds = {_KINDS.get(f"{getattr(a, '__name__', '')}_type") for a in members}
        kinds.discard(None)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(kinds) > 1:
            return f"must be {' or '.join(sorted(k for k in kinds if k))} (got {value!r})."
        words = [f"'{v}'" for v in _literal_values(annotation)]
        alternatives = f" or {', '.join(words)}" if words else ""
        allowed = _range(path) if kind.startswith(("int", "float")) else ""
        return f"must be {_KINDS[kind]}{' ' + allowed if allowed else ''}{alternatives} " \
               f"(got {value!r})."
    return f"{err['msg']} (got {value!r})."


def _range(path: list[str | int]) -> str:
    """Describes a numeric field's bounds from the schema, e.g. '> 0 and ≤ 1000'."""
    owner = _as_model(_field_model(path[:-1])[1]) if path else None
    field = owner.model_fields.get(str(path[-1])) if owner else None
    if field is None:
        return ""
    metadata = list(field.metadata)
    for member in typing.get_args(field.annotation):  # e.g. LearningRate | None
        for extra in getattr(member, "__metadata__", ()):
            metadata += getattr(extra, "metadata", [extra])
    names = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [f"{sign} {getattr(m, name)}" for m in metadata for name, sign in names.items()
             if getattr(m, name, None) is not None]
    return " and ".join(parts)


def _hint(key: str) -> str:
    """Returns the advice for a key, with {key} filled in.

    A gate's keys share theirs (eval.gates.*.threshold); a list item its list's (merge.weights).
    """
    parts = key.split(".")
    pattern = ".".join([*parts[:2], "*", *parts[3:]]) if key.startswith("eval.gates.") else key
    parent = ".".join(parts[:-1]) if parts[-1].isdigit() else key
    return (_HINTS.get(key) or _HINTS.get(pattern) or _HINTS.get(parent, "")).format(key=key)


def _missing_values(data: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += _missing_values(v, f"{prefix}{k}.")
    elif data == MISSING:
        found.append(prefix[:-1])
    return found


def _drop(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node[p]
    node.pop(last, None)


def schema_problems(data: dict[str, Any]) -> tuple[AppConfig | None, list[Problem]]:
    """Checks the config against the typed schema; returns the model (if valid) and problems."""
    problems = []
    for key in _missing_values(data):
        text = f"is required (it is ???). Set it on the command line: {key}=..."
        problems.append(Problem(key, text))
        _drop(data, key)
    try:
        model = AppConfig.model_validate(data)
    except ValidationError as exc:
        seen: set[str] = set()
        for err in exc.errors():
            path = _key_path(tuple(err["loc"]), data)
            key = ".".join(str(p) for p in path) or "config"
            if key in seen or key in {p.key for p in problems}:
                continue
            seen.add(key)
            text = _message(dict(err), path)
            if _hint(key):
                text = f"{text} {_hint(key)}"
            problems.append(Problem(key, text))
        return None, problems
    return (model, problems) if not problems else (None, problems)


def validate_and_resolve(data: dict[str, Any], env: Any = None) -> tuple[AppConfig, Resolved]:
    """Validates a plain (resolved) config dict and resolves its "auto" values, once.

    The cross-field rules see the same `Resolved` that compile_plan then takes, so the batch
    search and every other "auto" is decided a single time.

    Args:
        data: The composed config as plain containers (no hydra node).
        env: The environment facts (llmops.env.Environment); detected when None.

    Returns:
        (the validated config, its resolution for env).

    Raises:
        ConfigError: With every problem found.
    """
    from llmops.config.model_facts import fill_model_facts
    from llmops.config.rules.cross_field import cross_field_problems
    from llmops.env import detect
    from llmops.config.resolve import resolve

    env = env or detect()
    data = dict(data)
    data.pop("hydra", None)
    data.pop("sweeps", None)
    facts = fill_model_facts(data)
    cfg, problems = schema_problems(data)
    if facts.unfilled:  # "got None" on a fact left null: the reason it is null says more
        problems = [p for p in problems if p.key not in facts.unfilled]
        cfg = None
    problems = _merge_problems(facts.problems, problems)
    reported = {p.key for p in problems}
    problems += [p for p in outbound_secret_problems(data) if p.key not in reported]
    resolved = None
    if cfg is not None:
        resolved = resolve(cfg, env, facts.sources)
        problems += cross_field_problems(cfg, env, resolved)
    if problems:
        raise ConfigError(problems)
    assert cfg is not None and resolved is not None
    return cfg, resolved


def _merge_problems(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Returns first plus the problems of more on keys first does not already report."""
    keys = {p.key for p in first}
    return first + [p for p in more if p.key not in keys]


def validate(data: dict[str, Any], env: Any = None) -> AppConfig:
    """Validates a plain (resolved) config dict; raises ConfigError with every problem found.

    Args:
        data: The composed config as plain containers (no hydra node).
        env: The environment facts (llmops.env.Environment); detected when None.
    """
    return validate_and_resolve(data, env)[0]
