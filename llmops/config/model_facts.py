"""Fills a hub model's null architecture facts from its config.json, before schema validation.

`model=hub model.hub_id=ID_OR_DIR` leaves the facts null; they are read from the model's
config.json: a local folder, the Hugging Face cache (``try_to_load_from_cache``), or, online and
without HF_HUB_OFFLINE, that one file fetched with ``hf_hub_download``. A value the config sets
(a preset's, or an override) is never replaced. The parameter count is the architecture's
arithmetic (``llmops.planning.architecture``); the chat template family comes from the folder's
chat_template.jinja / tokenizer_config.json when present, else from the model_type.

Pure config layer: json and huggingface_hub (imported lazily), never torch or transformers.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.config.schema import ModelConfig
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
#: Markers of each chat template family in a template's text, checked in this order.
TEMPLATE_MARKERS = (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"),
                    ("<start_of_turn>", "gemma"), ("<|user|>", "phi3"), ("[INST]", "mistral"))
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "chat_template.json")
TIMEOUT_S = 5.0  # the one hub request for config.json


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


class _Unreadable(Exception):
    """config.json cannot be had; the message says why and how to fix it."""


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
    if not missing:
        return out
    hub_id = model.get("hub_id")
    filled: dict[str, Any] = {}
    if isinstance(hub_id, str) and hub_id.strip() and hub_id != "???":
        if "name" in missing:
            filled["name"] = Path(hub_id.rstrip("/")).name or hub_id
            out.sources["name"] = "model.hub_id"
        try:
            config, where, folder = read_config(hub_id)
        except _Unreadable as exc:
            out.problems.append(Problem("model.hub_id", str(exc)))
        else:
            _derive(config, where, folder, hub_id, missing, filled, out)
    elif hub_id is None:
        out.problems.append(Problem(
            "model.hub_id", "is required to read the model's architecture facts "
            f"({', '.join('model.' + k for k in missing)}) from its config.json. Set "
            "model.hub_id=org/name (a hub id) or model.hub_id=/path/to/model (a local folder)."))
    data["model"] = {**model, **filled}
    out.unfilled = {f"model.{k}" for k in missing if k not in filled}
    return out


def _derive(config: dict[str, Any], where: str, folder: Path | None, hub_id: str,
            missing: list[str], filled: dict[str, Any], out: FilledFacts) -> None:
    """Fills each missing fact from config.json; a fact it cannot give becomes a problem."""
    fix = "Set it as an override (e.g. model.{key}=...) from the model card."
    for key in missing:
        try:
            value, source = _fact(key, config, where, folder, hub_id)
        except UnknownArchitecture as exc:
            out.problems.append(Problem(f"model.{key}", f"cannot be derived from {where}: "
                                        f"{exc}. {fix.format(key=key)}"))
            continue
        if value is None:
            continue
        filled[key], out.sources[key] = value, source
    template = filled.get("chat_template")
    allowed = _allowed_templates()
    if template is not None and allowed and template not in allowed:
        source = out.sources.pop("chat_template")
        del filled["chat_template"]
        out.problems.append(Problem(
            "model.chat_template", f"{hub_id} uses a {template} chat template (from "
            f"{source}), which llmops cannot train with yet (allowed: "
            f"{', '.join(allowed)}). Set model.chat_template={allowed[0]} only if the model was "
            "trained on that format, or pick a preset (model=qwen3b, model=llama8b, ...)."))


def _fact(key: str, config: dict[str, Any], where: str, folder: Path | None,
          hub_id: str) -> tuple[Any, str]:
    """Returns (value, where it came from) of one fact; raises UnknownArchitecture if it can't."""
    if key == "name":
        return None, ""
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
        return config.get("num_key_value_heads") or _int(config, "num_attention_heads"), where
    if key == "chat_template":
        return _template(config, where, folder, hub_id)
    return _int(config, CONFIG_KEYS[key]), where


def _int(config: dict[str, Any], name: str) -> int:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnknownArchitecture(f"it has no positive integer '{name}' (got {value!r})")
    return value


def _allowed_templates() -> list[str]:
    """Returns the chat template families the schema accepts (empty: any name)."""
    annotation = ModelConfig.model_fields["chat_template"].annotation
    return [str(a) for a in typing.get_args(annotation)] \
        if typing.get_origin(annotation) is typing.Literal else []


def _template(config: dict[str, Any], where: str, folder: Path | None,
              hub_id: str) -> tuple[str, str]:
    """Returns the chat template family: from the tokenizer's template files, else model_type."""
    for path in _template_files(folder, hub_id):
        family = template_family(_template_text(path))
        if family:
            return family, str(path)
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
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        value = " ".join(str(t.get("template", "")) for t in value if isinstance(t, dict))
    return value if isinstance(value, str) else ""


def template_family(text: str) -> str | None:
    """Returns the chat template family whose markers a template's text uses, or None."""
    return next((family for marker, family in TEMPLATE_MARKERS if marker in text), None)


def is_local_path(hub_id: str) -> bool:
    """Tells whether a model.hub_id names a folder (it exists, or is written as a path)."""
    return Path(hub_id).expanduser().is_dir() or hub_id.startswith(("/", ".", "~"))


def cached_file(hub_id: str, name: str) -> Path | None:
    """Returns a hub model's file from the local Hugging Face cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(hub_id, name)
    except HFValidationError:
        return None
    return Path(found) if isinstance(found, str) else None


def read_config(hub_id: str) -> tuple[dict[str, Any], str, Path | None]:
    """Reads a model's config.json: a local folder, the HF cache, or (online) the hub.

    Returns:
        (the parsed config.json, where it was read, the local folder or None for a hub id).

    Raises:
        _Unreadable: With the reason and the fixes.
    """
    if is_local_path(hub_id):
        folder = Path(hub_id).expanduser().resolve()
        path = folder / "config.json"
        if not folder.is_dir():
            raise _Unreadable(f"'{hub_id}' is written as a path but is no folder. Point "
                              "model.hub_id at a model folder (one with config.json), or use a "
                              "hub id such as Qwen/Qwen2.5-3B-Instruct.")
        if not path.is_file():
            raise _Unreadable(f"folder '{folder}' has no config.json, so it is no saved model. "
                              "Point model.hub_id at a save_pretrained folder.")
        return _parse(path), str(path), folder
    path = cached_file(hub_id, "config.json")
    if path is not None:
        return _parse(path), str(path), None
    config, url = _fetch(hub_id)
    return config, url, None


def _fetch(hub_id: str) -> tuple[dict[str, Any], str]:
    """Fetches only config.json from the hub: one request, a short timeout, no retries.

    (hf_hub_download retries a dead connection for about half a minute.) Kept for the process:
    the pre-flight and the job validate the same config.
    """
    from huggingface_hub import constants

    key = (constants.ENDPOINT, hub_id)
    if key not in _FETCHED:
        _FETCHED[key] = _fetch_once(hub_id)
    config, url = _FETCHED[key]
    return dict(config), url


_FETCHED: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}


def _fetch_once(hub_id: str) -> tuple[dict[str, Any], str]:
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import (
        build_hf_headers,
        get_session,
        hf_raise_for_status,
        validate_repo_id,
    )

    fixes = (f"Fixes: a local folder (model.hub_id=/path/to/model), `huggingface-cli download "
             f"{hub_id}` while online, or set the facts as overrides (model.params=... "
             "model.num_layers=... and the others).")
    if constants.is_offline_mode():
        raise _Unreadable(f"'{hub_id}': its config.json is not in the Hugging Face cache and "
                          f"HF_HUB_OFFLINE is set, so its architecture facts cannot be read. "
                          f"{fixes}")
    try:
        validate_repo_id(hub_id)
    except HFValidationError:
        raise _Unreadable(f"'{hub_id}' is neither a local folder nor a valid hub id (org/name). "
                          "Use e.g. model.hub_id=Qwen/Qwen2.5-3B-Instruct or a folder "
                          "path.") from None
    url = hf_hub_url(hub_id, "config.json")
    try:
        response = get_session().get(url, headers=build_hf_headers(), timeout=TIMEOUT_S,
                                     follow_redirects=True)
        hf_raise_for_status(response)
        config = response.json()
    except transport_errors() as exc:  # hub HTTP errors are OSErrors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Unreadable(f"'{hub_id}': cannot fetch config.json from {constants.ENDPOINT} "
                          f"({type(exc).__name__}: {reason}). {fixes}") from None
    if not isinstance(config, dict):
        raise _Unreadable(f"{url} holds no JSON object. Check model.hub_id.")
    return config, url


def transport_errors() -> tuple[type[BaseException], ...]:
    """Returns what a failed hub request raises: OSError (hub HTTP errors), ValueError (a bad
    answer) and the HTTP client's own errors (huggingface_hub's httpx2)."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    try:
        import httpx2

        errors.append(httpx2.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def _parse(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Unreadable(f"cannot read {path}: {exc}. Re-save the model or re-download "
                          "config.json.") from None
    if not isinstance(config, dict):
        raise _Unreadable(f"{path} holds no JSON object. Re-save the model.")
    return config
