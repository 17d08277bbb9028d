"""Fills a hub model's null architecture facts from its config.json, before schema validation.

`model=hub model.hub_id=ID_OR_DIR` leaves the facts null; they are read from the model's
config.json: a local folder, the Hugging Face cache (``try_to_load_from_cache``), or, online and
without HF_HUB_OFFLINE, that one file fetched in one request (no retries). A value the config sets
(a preset's, or an override) is never replaced. The parameter count is the architecture's
arithmetic (``llmops.planning.architecture``); the chat template is ``auto`` (the tokenizer's own)
when the model ships one (chat_template.jinja / tokenizer_config.json), else the TRL template of
its model_type's instruct models (``qwen2_5``, ``llama3_1``, ...). Finding the files is
model_files.py's.

config.json is untrusted: a fact of the wrong type (``"num_key_value_heads": "two"``, a list where
an int belongs, zero or negative) is a problem naming the fact and the file; the file is read
under ``limits.row_bytes`` and ``limits.json_depth``. A config.json naming custom code
(``auto_map``) for a model_type transformers does not ship asks for
``model.trust_remote_code=true``, said at compile time wherever config.json is on this machine.

Pure config layer: json and huggingface_hub (imported lazily), never torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.config.model_files import (
    FileLimits,
    Unreadable,
    cached_file,
    local_config,
    read_config,
)
from llmops.errors import Problem
from llmops.planning.architecture import ARCHITECTURES, UnknownArchitecture, count_params, tied

#: The model group's facts config.json can give, and the config.json key each one is read from.
CONFIG_KEYS = {
    "num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size", "num_attention_heads": "num_attention_heads",
    "vocab_size": "vocab_size", "context_length": "max_position_embeddings",
}
FACTS = ("name", "family", "params", *CONFIG_KEYS, "num_kv_heads", "tie_embeddings",
         "chat_template")
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "chat_template.json")


@dataclass
class FilledFacts:
    """What filling found: where each filled fact came from, and what could not be read.

    Attributes:
        sources: Fact name -> where its value was read, for the facts the config left null.
        problems: One problem per fact that could not be read, naming the fix.
        unfilled: The keys (model.X) still null; their schema errors are replaced by `problems`.
    """

    sources: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unfilled: set[str] = field(default_factory=set)


def fill_model_facts(data: dict[str, Any]) -> FilledFacts:
    """Replaces data["model"] by a copy whose null facts are read from the model's config.json.

    Args:
        data: The composed config as plain containers; only its "model" entry is replaced.

    Returns:
        Where the filled facts came from and the problems of those that could not be read.
    """
    model = data.get("model")
    out = FilledFacts()
    if not isinstance(model, dict) or model.get("source") != "hub":
        return out
    missing = [k for k in FACTS if k in model and model[k] is None]
    hub_id = model.get("hub_id")
    named = isinstance(hub_id, str) and bool(hub_id.strip()) and hub_id != "???"
    limits = file_limits(data.get("limits"))
    if not missing:
        found = local_config(hub_id, limits) if named and model.get(
            "trust_remote_code") is not True else None
        if found is not None:
            out.problems += remote_code_problems(found[0], found[1], model)
        return out
    filled: dict[str, Any] = {}
    if named:
        if "name" in missing:
            filled["name"] = Path(hub_id.rstrip("/")).name or hub_id
            out.sources["name"] = "model.hub_id"
        try:
            config, where, folder = read_config(hub_id, limits)
        except Unreadable as exc:
            out.problems.append(Problem("model.hub_id", str(exc)))
        else:
            _derive(config, where, folder, hub_id, missing, filled, out)
            out.problems += remote_code_problems(config, where, model)
    elif hub_id is None:
        out.problems.append(Problem(
            "model.hub_id", "is required to read the model's architecture facts "
            f"({', '.join('model.' + k for k in missing)}) from its config.json. Set "
            "model.hub_id=org/name (a hub id) or model.hub_id=/path/to/model (a local folder)."))
    data["model"] = {**model, **filled}
    out.unfilled = {f"model.{k}" for k in missing if k not in filled}
    return out


def file_limits(limits: Any) -> FileLimits:
    """Returns the bounds config.json is read under from the composed (not yet validated)
    ``limits``: a value the schema would refuse is replaced by the schema's own bound (the
    schema reports it)."""
    from llmops.config.schema import LimitsConfig

    def bound(key: str) -> int:
        field_info = LimitsConfig.model_fields[key]
        low = next(m.ge for m in field_info.metadata if hasattr(m, "ge"))
        high = next(m.le for m in field_info.metadata if hasattr(m, "le"))
        value = limits.get(key) if isinstance(limits, dict) else None
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else high

    return FileLimits(bound("row_bytes"), bound("json_depth"))


def remote_code_problems(config: dict[str, Any], where: str, model: dict[str, Any]
                         ) -> list[Problem]:
    """Returns the problem of a config.json that needs the repository's own code (``auto_map``,
    for a model_type transformers does not ship) while model.trust_remote_code is not true."""
    auto_map = config.get("auto_map")
    if model.get("trust_remote_code") is True or not auto_map:
        return []
    kind = config.get("model_type")
    if isinstance(kind, str) and _transformers_ships(kind):
        return []
    named = ", ".join(f"{k} -> {v}" for k, v in auto_map.items())[:200] if isinstance(
        auto_map, dict) else repr(auto_map)[:200]
    return [Problem("model.trust_remote_code", (
        f"{where} names custom model code (auto_map: {named}) for model_type {kind!r}, which "
        "transformers does not ship, so the model cannot load without it. "
        "model.trust_remote_code=true (+model.trust_remote_code=true on a preset) lets "
        "transformers import and run the Python files of that model repository on this "
        "machine: set it only for a repository you trust. Or use a model whose architecture "
        "transformers ships."))]


def _transformers_ships(model_type: str) -> bool:
    """Tells whether transformers has a model folder for a model_type (found without
    importing transformers)."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return False
    name = model_type.replace("-", "_")
    if not name.isidentifier():
        return False
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    return (root / name).is_dir()


def _derive(config: dict[str, Any], where: str, folder: Path | None, hub_id: str,
            missing: list[str], filled: dict[str, Any], out: FilledFacts) -> None:
    """Fills each missing fact from config.json; a fact it cannot give becomes a problem."""
    fix = "Set it as an override (e.g. model.{key}=...) from the model card."
    for key in (k for k in missing if k != "name"):  # the name comes from hub_id
        try:
            value, source = _fact(key, config, where, folder, hub_id)
        except UnknownArchitecture as exc:
            out.problems.append(Problem(f"model.{key}", f"cannot be derived from {where}: "
                                        f"{exc}. {fix.format(key=key)}"))
            continue
        filled[key], out.sources[key] = value, source


def _fact(key: str, config: dict[str, Any], where: str, folder: Path | None,
          hub_id: str) -> tuple[Any, str]:
    """Returns (value, where it came from) of one fact; raises UnknownArchitecture if it can't."""
    if key == "family":
        kind = config.get("model_type")
        if not isinstance(kind, str) or not kind:
            raise UnknownArchitecture("it names no model_type")
        return kind, where
    if key == "params":
        return count_params(config), f"{where} ({config['model_type']} arithmetic)"
    if key == "tie_embeddings":
        return tied(config), where
    if key == "num_kv_heads":
        if config.get("num_key_value_heads") is None:
            return _int(config, "num_attention_heads"), where
        return _int(config, "num_key_value_heads"), where
    if key == "chat_template":
        return _template(config, where, folder, hub_id)
    return _int(config, CONFIG_KEYS[key]), where


def _int(config: dict[str, Any], name: str) -> int:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnknownArchitecture(f"it has no positive integer '{name}' (got "
                                  f"{repr(value)[:60]})")
    return value


def _template(config: dict[str, Any], where: str, folder: Path | None,
              hub_id: str) -> tuple[str, str]:
    """Returns the chat template to use: ``auto`` (the tokenizer's own) when the model ships one,
    else the TRL template of its model_type's instruct models."""
    for path in _template_files(folder, hub_id):
        if _template_text(path).strip():
            return "auto", str(path)
    kind = config.get("model_type")
    arch = ARCHITECTURES.get(kind) if isinstance(kind, str) else None
    if arch is None or arch.template is None:
        raise UnknownArchitecture(f"no chat template file was found and model_type {kind!r} "
                                  "has no template family in llmops")
    return arch.template, f"model_type {kind} in {where}"


def _template_files(folder: Path | None, hub_id: str) -> list[Path]:
    if folder is not None:
        return [folder / name for name in TEMPLATE_FILES if (folder / name).is_file()]
    return [path for name in TEMPLATE_FILES if (path := cached_file(hub_id, name))]


def _template_text(path: Path) -> str:
    """Returns the chat template text a template file holds ('' when it holds none)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix != ".json":
            return text
        value = json.loads(text).get("chat_template")
    except (OSError, ValueError, AttributeError, RecursionError):
        return ""
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        value = " ".join(str(t.get("template", "")) for t in value if isinstance(t, dict))
    return value if isinstance(value, str) else ""
