"""Content records of store entries and checks of entries and training checkpoints.

At publish the store records every file of an entry (size + xxh3-128 hash, or a link's target) in
its `_stage.json`. On reuse it compares sizes (cheap, always) or hashes too (`store.verify=full`,
`python -m llmops.store verify`). A checkpoint is complete when its trainer_state.json and other
JSON files parse, its safetensors files hold every byte their header promises and its torch files
(zip archives) pass their CRC check.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import xxhash

HASH = "xxh3_128"
_CHUNK = 1 << 20


def file_hash(path: Path) -> str:
    """Returns the xxh3-128 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(folder: Path, skip: str) -> dict[str, dict[str, Any]]:
    """Returns {relative path: {"size", HASH} or {"link": target}} for everything under folder.

    Args:
        folder: The finished work folder of a stage.
        skip: A top-level file name to leave out (the entry's own metadata file).
    """
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == skip:
                continue
            if path.is_symlink():
                out[rel] = {"link": os.readlink(path)}
            elif name in files:
                out[rel] = {"size": path.stat().st_size, HASH: file_hash(path)}
    return out


def entry_problems(entry: Path, recorded: dict[str, dict[str, Any]], full: bool) -> list[str]:
    """Returns what differs between an entry's files and their record (empty when it matches).

    Args:
        entry: The entry folder.
        recorded: The `files` record written at publish.
        full: Also compare content hashes (reads every byte); otherwise sizes and links only.
    """
    problems = []
    for rel, want in recorded.items():
        path = Path(entry) / rel
        if "link" in want:
            if not path.is_symlink() or os.readlink(path) != want["link"]:
                problems.append(f"{rel}: link changed (recorded -> {want['link']})")
            elif not path.exists():
                problems.append(f"{rel}: link target {want['link']} is gone")
            continue
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        if size is None:
            problems.append(f"{rel}: missing")
        elif size != want["size"]:
            problems.append(f"{rel}: size {size} bytes, {want['size']} when published")
        elif full and file_hash(path) != want[HASH]:
            problems.append(f"{rel}: content hash differs from the one recorded at publish")
    return problems


def checkpoint_problem(ckpt: Path) -> str | None:
    """Returns why a `checkpoint-N` folder cannot be resumed from, or None when it is complete."""
    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({type(exc).__name__})"
    if not isinstance(state, dict):
        return "trainer_state.json is not a JSON object"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for path in sorted(ckpt.iterdir()):
        problem = _file_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable JSON ({type(exc).__name__})"
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (OSError, SafetensorError) as exc:
            return f"incomplete safetensors file ({exc})"
    elif path.suffix in (".pt", ".pth", ".bin"):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            return f"incomplete torch file ({exc})"
        if bad:
            return f"torch file fails its CRC check at {bad}"
    return None
