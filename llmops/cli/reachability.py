"""Checks, before a real run's first stage, that a hub model's config, tokenizer and weights exist.

A model can be had from a local folder holding those files, from the Hugging Face cache
(``try_to_load_from_cache``, no request), or from a hub that answers one request
(``HfApi().model_info`` with a short timeout per read, no retries, and limits.http_total_seconds in
all). Otherwise the run stops with exit 2 and
the fixes, instead of spending a minute in huggingface_hub's retries inside the data stage and
failing in sft. Dry runs never come here: planning a preset needs no download.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmops.config.model_files import cached_file, is_local_path, transport_errors
from llmops.errors import Problem

KEY = "model.hub_id"
TIMEOUT_S = 5.0
#: What a model is loaded from: each part is there when any of its files is.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _fixes(hub_id: str) -> str:
    return (f"Fixes: point model.hub_id at a local model folder; or download it first while "
            f"online (`huggingface-cli download {hub_id}`) and run with HF_HUB_OFFLINE=1, which "
            f"then reads the filled cache.")


def reachability_problems(hub_id: str, total_s: float,
                          timeout_s: float = TIMEOUT_S) -> list[Problem]:
    """Returns the problem (at most one) with getting a model's config, tokenizer and weights.

    Args:
        hub_id: model.hub_id: a local folder or a hub id.
        total_s: How long the one hub request may take in all (limits.http_total_seconds).
        timeout_s: How long each read of it may take.
    """
    if is_local_path(hub_id):
        return _folder_problems(Path(hub_id).expanduser())
    missing = _missing_in_cache(hub_id)
    if not missing:
        return []
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return [Problem(KEY, f"'{hub_id}' is not in the Hugging Face cache (missing: "
                             f"{', '.join(missing)}) and HF_HUB_OFFLINE is set, so it cannot "
                             f"be downloaded. {_fixes(hub_id)}")]
    return _hub_problems(hub_id, missing, timeout_s, total_s)


def _folder_problems(folder: Path) -> list[Problem]:
    if not folder.is_dir():
        return [Problem(KEY, f"'{folder}' is no folder. Point model.hub_id at a saved model "
                             "folder, or use a hub id such as Qwen/Qwen2.5-3B-Instruct.")]
    missing = _missing(lambda name: folder / name if (folder / name).is_file() else None)
    if not missing:
        return []
    return [Problem(KEY, f"folder '{folder}' lacks the model's {', '.join(missing)} (looked "
                         f"for config.json, one of {', '.join(TOKENIZER_FILES)}, and one of "
                         f"{', '.join(WEIGHT_FILES)}). Save the whole model there "
                         "(model.save_pretrained and tokenizer.save_pretrained).")]


def _missing_in_cache(hub_id: str) -> list[str]:
    return _missing(lambda name: cached_file(hub_id, name))


def _missing(find) -> list[str]:  # type: ignore[no-untyped-def]
    """Returns the parts (config, tokenizer, weights) that find(filename) -> Path | None lacks."""
    missing = [] if find("config.json") else ["config.json"]
    if not any(find(name) for name in TOKENIZER_FILES):
        missing.append("tokenizer")
    if not any(_weights_there(find, name) for name in WEIGHT_FILES):
        missing.append("weights")
    return missing


def _weights_there(find, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Tells whether a weights file is there; for an index, whether every shard it lists is."""
    path = find(name)
    if path is None or not name.endswith(".index.json"):
        return path is not None
    try:
        shards = set(json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(find(shard) for shard in shards)


def _hub_problems(hub_id: str, missing: list[str], timeout_s: float,
                  total_s: float) -> list[Problem]:
    """Asks the hub once whether it has the model; returns the problem when it cannot be had."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    from llmops.serving.deadline import DeadlineExceeded, within

    try:
        info = within(total_s, HfApi().model_info, hub_id, timeout=timeout_s)
    except DeadlineExceeded as exc:
        return [Problem(KEY, f"'{hub_id}' is not in the Hugging Face cache (missing: "
                             f"{', '.join(missing)}) and the hub at {constants.ENDPOINT} gave "
                             f"{exc}. {_fixes(hub_id)}")]
    except GatedRepoError:
        return [Problem(KEY, f"'{hub_id}' is gated on {constants.ENDPOINT}: accept its licence "
                             "on the model page and log in (`hf auth login`, or set HF_TOKEN). "
                             f"{_fixes(hub_id)}")]
    except RepositoryNotFoundError:
        return [Problem(KEY, f"'{hub_id}' does not exist on {constants.ENDPOINT} (or is private "
                             "and no token is set). Check the id, e.g. "
                             f"model.hub_id=Qwen/Qwen2.5-3B-Instruct. {_fixes(hub_id)}")]
    except HFValidationError:
        return [Problem(KEY, f"'{hub_id}' is neither a local folder nor a valid hub id "
                             "(org/name). Use e.g. model.hub_id=Qwen/Qwen2.5-3B-Instruct.")]
    except transport_errors() as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [Problem(KEY, f"'{hub_id}' is not in the Hugging Face cache (missing: "
                             f"{', '.join(missing)}) and the hub at {constants.ENDPOINT} could not "
                             f"be asked ({type(exc).__name__}: {reason}). "
                             f"{_fixes(hub_id)}")]
    files = {s.rfilename for s in info.siblings or []}
    lacking = [part for part, there in (
        ("config.json", "config.json" in files),
        ("tokenizer", any(name in files for name in TOKENIZER_FILES)),
        ("weights", any(name.endswith((".safetensors", ".bin")) for name in files)),
    ) if not there] if files else []
    if lacking:
        return [Problem(KEY, f"'{hub_id}' on {constants.ENDPOINT} has no {', '.join(lacking)}, "
                             "so it cannot be loaded as a causal LM. Pick a model repository "
                             "with config.json, a tokenizer and weights.")]
    return []

