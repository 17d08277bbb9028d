"""The store's run registry (`<store>/.runs/`): every run folder and the entries it uses.

A run writes its record before it looks up or builds each stage, so the record names every entry
the run may use even when the run folder later moves, is deleted or its manifest breaks; gc keeps
what such records name until told otherwise (`--force`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from llmops.files import write_json


@dataclass(frozen=True)
class RunRecord:
    """One run folder in the registry and the entries ("kind/fp24") it said it uses.

    `stages` is None for a record written before llmops kept them (it may use any entry), and
    `error` says why a record file could not be read.
    """

    file: Path
    run_dir: Path | None
    stages: frozenset[str] | None
    error: str | None = None


def record_file(root: Path, run_dir: Path) -> Path:
    """Returns the record file of a run folder in the registry under a store root."""
    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return Path(root) / ".runs" / f"{key}.json"


def register(root: Path, run_dir: Path, stages: tuple[str, ...] = ()) -> None:
    """Records that a run folder uses the store at root, and adds entries ("kind/fp24") to it."""
    record = record_file(root, run_dir)
    locks = Path(root) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"run-{record.stem}.lock")):
        try:
            old = json.loads(record.read_text())
            known = set(old.get("stages") or ())
            registered_at = float(old.get("registered_at") or time.time())
        except (OSError, ValueError, AttributeError, TypeError):
            known, registered_at = set(), time.time()
        if stages and set(stages) <= known:
            return
        write_json(record, {"run_dir": str(Path(run_dir).resolve()),
                                   "registered_at": registered_at, "updated_at": time.time(),
                                   "stages": sorted(known | set(stages))})


def records(root: Path) -> list[RunRecord]:
    """Returns every record of the registry under a store root, readable or not."""
    out = []
    for path in sorted((Path(root) / ".runs").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            run_dir = Path(data["run_dir"])
            stages = data.get("stages")
            out.append(RunRecord(path, run_dir, None if stages is None
                                 else frozenset(str(s) for s in stages)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(RunRecord(path, None, None, f"{type(exc).__name__}: {exc}"))
    return out
