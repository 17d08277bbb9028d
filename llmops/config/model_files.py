"""Finds a model's files: a local folder, the Hugging Face cache, or (online) one hub request.

A config.json is read as untrusted data: one larger than ``limits.row_bytes`` or nested deeper
than ``limits.json_depth`` is refused (``Unreadable``), never a MemoryError or RecursionError.

Pure config layer: json and huggingface_hub (imported lazily), never torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.data import jsontext

TIMEOUT_S = 5.0  # the one hub request for config.json


class Unreadable(Exception):
    """config.json cannot be had; the message says why and how to fix it."""


def is_local_path(hub_id: str) -> bool:
    """Tells whether a model.hub_id names a folder (it exists, or is written as a path)."""
    return Path(hub_id).expanduser().is_dir() or hub_id.startswith(("/", ".", "~"))


def cached_file(hub_id: str, name: str) -> Path | None:
    """Returns a hub model's file from the local Hugging Face cache, or None (never downloads)."""
    import os

    from huggingface_hub import constants

    # huggingface_hub's lookup (which imports its HTTP stack) finds nothing without this folder
    if not os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "--".join(["models",
                                                                          *hub_id.split("/")]))):
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(hub_id, name)
    except HFValidationError:
        return None
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class FileLimits:
    """The bounds a config.json is read under: ``limits.row_bytes`` and ``limits.json_depth``."""

    max_bytes: int
    max_depth: int


def read_config(hub_id: str, limits: FileLimits) -> tuple[dict[str, Any], str, Path | None]:
    """Reads a model's config.json: a local folder, the HF cache, or (online) the hub.

    Returns:
        (the parsed config.json, where it was read, the local folder or None for a hub id).

    Raises:
        Unreadable: With the reason and the fixes.
    """
    if is_local_path(hub_id):
        folder = Path(hub_id).expanduser().resolve()
        path = folder / "config.json"
        if not folder.is_dir():
            raise Unreadable(f"'{hub_id}' is written as a path but is no folder. Point "
                              "model.hub_id at a model folder (one with config.json), or use a "
                              "hub id such as Qwen/Qwen2.5-3B-Instruct.")
        if not path.is_file():
            raise Unreadable(f"folder '{folder}' has no config.json, so it is no saved model. "
                              "Point model.hub_id at a save_pretrained folder.")
        return _parse(path, limits), str(path), folder
    path = cached_file(hub_id, "config.json")
    if path is not None:
        return _parse(path, limits), str(path), None
    config, url = _fetch(hub_id, limits)
    return config, url, None


def local_config(hub_id: str, limits: FileLimits) -> tuple[dict[str, Any], str] | None:
    """Returns a model's config.json and where it was read when it is on this machine (a local
    folder or the HF cache; never fetched), else None; unreadable counts as absent."""
    path = (Path(hub_id).expanduser() / "config.json" if is_local_path(hub_id)
            else cached_file(hub_id, "config.json"))
    if path is None or not path.is_file():
        return None
    try:
        return _parse(path, limits), str(path)
    except Unreadable:
        return None


def _fetch(hub_id: str, limits: FileLimits) -> tuple[dict[str, Any], str]:
    """Fetches only config.json from the hub: one request, a short timeout, no retries.

    (hf_hub_download retries a dead connection for about half a minute.) Kept for the process:
    the pre-flight and the job validate the same config.
    """
    from huggingface_hub import constants

    key = (constants.ENDPOINT, hub_id)
    if key not in _FETCHED:
        _FETCHED[key] = _fetch_once(hub_id, limits)
    config, url = _FETCHED[key]
    return dict(config), url


_FETCHED: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}


def _fetch_once(hub_id: str, limits: FileLimits) -> tuple[dict[str, Any], str]:
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
        raise Unreadable(f"'{hub_id}': its config.json is not in the Hugging Face cache and "
                          f"HF_HUB_OFFLINE is set, so its architecture facts cannot be read. "
                          f"{fixes}")
    try:
        validate_repo_id(hub_id)
    except HFValidationError:
        raise Unreadable(f"'{hub_id}' is neither a local folder nor a valid hub id (org/name). "
                          "Use e.g. model.hub_id=Qwen/Qwen2.5-3B-Instruct or a folder "
                          "path.") from None
    url = hf_hub_url(hub_id, "config.json")
    try:
        response = get_session().get(url, headers=build_hf_headers(), timeout=TIMEOUT_S,
                                     follow_redirects=True)
        hf_raise_for_status(response)
        if len(response.content) > limits.max_bytes:
            raise ValueError(f"config.json is larger than limits.row_bytes={limits.max_bytes}")
        config = jsontext.loads(response.text, limits.max_depth)
    except transport_errors() as exc:  # hub HTTP errors are OSErrors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Unreadable(f"'{hub_id}': cannot fetch config.json from {constants.ENDPOINT} "
                          f"({type(exc).__name__}: {reason}). {fixes}") from None
    if not isinstance(config, dict):
        raise Unreadable(f"{url} holds no JSON object. Check model.hub_id.")
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


def _parse(path: Path, limits: FileLimits) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise Unreadable(f"{path} is {size} bytes, larger than limits.row_bytes="
                             f"{limits.max_bytes}; a config.json is a few kilobytes. Re-save the "
                             "model or re-download config.json.")
        config = jsontext.loads(path.read_text(encoding="utf-8"), limits.max_depth)
    except jsontext.TooDeep as exc:
        raise Unreadable(f"{path} is {exc.msg}; a config.json is a few levels deep. Re-save "
                         "the model or re-download config.json.") from None
    except (OSError, ValueError) as exc:
        raise Unreadable(f"cannot read {path}: {exc}. Re-save the model or re-download "
                          "config.json.") from None
    if not isinstance(config, dict):
        raise Unreadable(f"{path} holds no JSON object. Re-save the model.")
    return config
