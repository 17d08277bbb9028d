"""Names that reach a file name, a Modelfile or generated code, and what each may hold. Pure.

`model.name` (by default the model folder's name or the hub id's last part), `release.name`,
`release.version` and `deploy.ollama.model_name` end up in the release bundle's file names, in
`ollama create NAME`, in the model card's commands and in integration_config.json's client
snippets. Each is checked here with `re.fullmatch` (a `$` would accept a trailing newline), so a
quote, a newline, a `/` or a shell character is an error at compile time (exit 2) naming the key,
the value and the pattern; the writers quote the names anyway (llmops.serving.integration).
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

#: A file name: letters, digits, '.', '_', '-', starting with a letter or digit, 1-100 characters.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: model.name: a file name short enough that llmops-<model.name> is an Ollama model name.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Ollama's model names (its types/model/name.go): [namespace/]model[:tag]; each part starts with a
#: letter, digit or '_', holds letters, digits, '_', '-' (and '.', not in the namespace), and has at
#: most 80 characters. A host part is not accepted: deploy.ollama.host names the server.
OLLAMA_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_-]{0,79}/)?[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
                         r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?")
# semver.org's own regular expression for a version (2.0.0), used with fullmatch.
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


def _checker(pattern: re.Pattern[str], code: str, message: str):
    """Returns a pydantic after-validator: the value unchanged if pattern fully matches it, else
    the error `code` with `message`."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise PydanticCustomError(code, message)
        return value

    return check


#: release.name: it names the bundle folder and tarball.
release_name = _checker(
    FILE_NAME, "release_name",
    "must be a file name of letters, digits, '.', '_' and '-' that starts with a letter or digit, "
    "at most 100 characters (it names the bundle; pattern [A-Za-z0-9][A-Za-z0-9._-]*), e.g. "
    "task-api-assistant")
#: model.name: it names the release, the served model and the Ollama model.
model_name = _checker(
    MODEL_NAME, "model_name",
    "must be letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 "
    "characters (pattern [A-Za-z0-9][A-Za-z0-9._-]*): it names the release, the served model and "
    "the Ollama model. By default it is the model folder's name (or the hub id's last part); set "
    "model.name=my-model")
#: deploy.ollama.model_name: Ollama's model-name rules.
ollama_model_name = _checker(
    OLLAMA_NAME, "ollama_name",
    "must be an Ollama model name [namespace/]model[:tag]: each part starts with a letter, digit "
    "or '_' and holds letters, digits, '_', '-' (and '.', not in the namespace), at most 80 "
    "characters, e.g. task-bot or me/task-bot:q8")
#: release.version: a semantic version (it is part of the bundle's file name).
semver = _checker(
    SEMVER, "semver",
    "must be a semantic version MAJOR.MINOR.PATCH[-PRE][+BUILD], e.g. 1.0.0 or 1.1.0-rc.1 "
    "(semver.org)")
