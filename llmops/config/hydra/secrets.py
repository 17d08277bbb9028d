"""Keeps secrets from the environment out of everything llmops writes, logs or prints.

A config value may read the environment (`${oc.env:NAME}`). For a secret-looking name
(`WANDB_API_KEY`, `HF_TOKEN`, `DB_PASSWORD`, ...) llmops never resolves it: the config keeps
the interpolation text, so plan.json, manifest.json, metrics.json, the W&B config and the logs
record `${oc.env:WANDB_API_KEY}`, never the key. A secret's value that reaches the config some
other way (a shell-expanded `$WANDB_API_KEY` on the command line) is replaced by the same text.
No llmops key needs a secret: W&B, the hub and the OpenAI client read theirs from the
environment themselves, so a key whose value leaves llmops (OUTBOUND: the W&B entity, a hub id,
...) and reads a secret is a config error rather than the masked text sent as that value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from llmops.errors import Problem

# Parts of a variable name that mark a secret wherever they occur (HFTOKEN, MY_SECRET_X) ...
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL",
                 "PRIVATE", "APIKEY", "COOKIE")
# ... and parts that do only as a whole `_`-separated part (KEY, not KEYBOARD; AUTH, not AUTHOR).
_SECRET_PARTS = frozenset({"KEY", "KEYS", "AUTH", "PASS", "PWD", "CREDS", "SIGNATURE"})
# Variables that match the patterns above but hold no secret (PWD is the working directory).
_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
# Values matched by value must look like a secret, or ordinary words would be replaced everywhere
# (AUTH_MODE=disabled must not turn tracking.mode=disabled into a mask): at least 8 characters
# with a digit, or at least 16.
MIN_VALUE_LENGTH = 8
MIN_WORD_LENGTH = 16


def is_secret_name(name: str) -> bool:
    """Tells whether an environment variable's name says it holds a secret (HF_TOKEN, ...)."""
    upper = str(name).upper()
    if upper in _NOT_SECRET:
        return False
    if any(word in upper for word in _SECRET_WORDS):
        return True
    return any(part in _SECRET_PARTS for part in re.split(r"[^A-Z0-9]+", upper))


def mask(name: str) -> str:
    """Returns the text recorded instead of a secret: the interpolation that reads it."""
    return "${oc.env:" + name + "}"


def _looks_secret(value: str) -> bool:
    if len(value) >= MIN_WORD_LENGTH:
        return True
    return len(value) >= MIN_VALUE_LENGTH and any(c.isdigit() for c in value)


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Maps the value of every secret-looking environment variable to its name (longest first)."""
    env = os.environ if environ is None else environ
    found = {v: k for k, v in sorted(env.items()) if is_secret_name(k) and _looks_secret(v)}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def redact(obj: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """Returns obj (plain containers and strings) with every secret value replaced by its mask."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for value, name in secrets.items():
            if value in obj:
                obj = obj.replace(value, mask(name))
        return obj
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj


def _masked_env(key: str, *default: Any) -> Any:
    """Stands in for OmegaConf's oc.env while llmops resolves its config."""
    from omegaconf.resolvers import oc

    return mask(key) if is_secret_name(key) else oc.env(key, *default)


@contextmanager
def secrets_unresolved() -> Iterator[None]:
    """Resolves `${oc.env:NAME}` of a secret-looking NAME to its own text inside the block."""
    from omegaconf import OmegaConf
    from omegaconf.resolvers import oc

    OmegaConf.register_new_resolver("oc.env", _masked_env, replace=True)
    try:
        yield
    finally:
        OmegaConf.register_new_resolver("oc.env", oc.env, replace=True)


# Keys whose value leaves llmops: the service that receives it, as what, and a good value.
OUTBOUND = {
    "tracking.project": ("W&B would receive it as the project name", "my-project"),
    "tracking.entity": ("W&B would receive it as the entity name", "my-team"),
    "tracking.group": ("W&B would receive it as the group name", "my-group"),
    "tracking.tags": ("W&B would receive it as a tag", "[my-tag]"),
    "model.name": ("W&B would receive it in the run's model= tag", "my-model"),
    "model.hub_id": ("the Hugging Face Hub would receive it as a model id", "org/name"),
    "data.hf_id": ("the Hugging Face Hub would receive it as a dataset id", "org/name"),
    "deploy.ollama.host": ("llmops would send the model to it as the Ollama server's address",
                           "http://gpu-box:11434"),
    "deploy.ollama.model_name": ("Ollama would receive it as the model's name", "my-model"),
}
_MASKED = re.compile(r"\$\{oc\.env:([^,}]+)[^}]*\}")


def _at(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def outbound_secret_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Lists the keys that leave llmops (OUTBOUND) but read a secret.

    llmops never resolves a secret (the config keeps `${oc.env:NAME}` as text), so such a key
    would send that text, e.g. to W&B as the entity name, instead of what the user meant.

    Args:
        data: The config as plain containers (to_plain's output: secrets still masked).
    """
    problems = []
    for key, (what, example) in OUTBOUND.items():
        value = _at(data, key)
        for item in value if isinstance(value, list) else [value]:
            found = _MASKED.search(item) if isinstance(item, str) else None
            if found and is_secret_name(found.group(1)):
                name = found.group(1)
                problems.append(Problem(key, (
                    f"reads {name}, a secret: {what}. llmops never resolves a secret, so it "
                    f"would send the text '{item}'. Give the value itself, e.g. "
                    f"{key}={example}; the services read their own keys from the environment.")))
                break
    return problems
