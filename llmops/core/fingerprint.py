"""Fingerprints of stages and content hashes of input files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(data: Any) -> str:
    """Serialises data deterministically (sorted keys, no whitespace)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(
    kind: str,
    params: dict[str, Any],
    upstream: dict[str, str],
    input_files: dict[str, str],
    version: str,
    recipe: int = 0,
) -> str:
    """Hashes what determines a stage's output; equal fingerprints mean reusable outputs.

    ``recipe`` (the stage table's version of the stage's code, ``StageKind.recipe``) is hashed
    only when not 0, so the stages whose code never changed keep their fingerprints.
    """
    payload = {
        "kind": kind,
        "params": params,
        "upstream": upstream,
        "inputs": sorted(input_files.values()),
        "version": version,
    }
    if recipe:
        payload["recipe"] = recipe
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Returns the sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def data_file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """Returns ``xxh3_128:<hex>`` of a data file's content: fast on files of gigabytes, and the
    same hash the stage store records (``llmops.store.integrity.HASH``)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return f"xxh3_128:{h.hexdigest()}"
