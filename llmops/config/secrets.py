"""Keeps secrets from the environment out of everything llmops writes, logs or prints.

A config value may read the environment (`${oc.env:NAME}`). For a secret-looking name
(`WANDB_API_KEY`, `HF_TOKEN`, `DB_PASSWORD`, ...) llmops never resolves it: the config keeps
the interpolation text, so plan.json, manifest.json, metrics.json, the W&B config and the logs
record `${oc.env:WANDB_API_KEY}`, never the key. A secret's value that reaches the config some
other way (a shell-expanded `$WANDB_API_KEY` on the command line) is replaced by the same text.
No llmops key needs a secret: W&B, the hub and the OpenAI client read theirs from the
environment themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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
