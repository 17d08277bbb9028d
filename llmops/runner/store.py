"""The content-addressed stage store: finished outputs keyed by fingerprint.

An entry is published by one atomic directory rename after the stage succeeded, so an entry that
exists is complete. A file lock per fingerprint makes concurrent jobs wait for each other instead
of doing the same work twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock

from llmops.compiler.plan import StageSpec
from llmops.runner.files import write_json_atomic

META = "_stage.json"


class Store:
    """A folder of finished stage outputs: <root>/<kind>/<fingerprint[:24]>/."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, spec: StageSpec) -> Path:
        """Returns where the stage's finished output lives (whether or not it exists yet)."""
        return self.root / spec.kind / spec.fingerprint[:24]

    def lookup(self, spec: StageSpec) -> Path | None:
        """Returns the finished entry for this stage, or None."""
        entry = self.entry(spec)
        return entry if (entry / META).is_file() else None

    def lock(self, spec: StageSpec) -> FileLock:
        """Returns the inter-process lock guarding this fingerprint."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{spec.fingerprint[:24]}.lock"))

    def new_tmp(self, spec: StageSpec) -> Path:
        """Creates an empty private work folder on the store's filesystem."""
        tmp = self.root / ".tmp" / f"{spec.kind}-{spec.fingerprint[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, spec: StageSpec, tmp: Path, meta: dict[str, Any]) -> Path:
        """Moves a finished work folder into place with one atomic rename; returns the entry."""
        write_json_atomic(tmp / META, {"kind": spec.kind, "fingerprint": spec.fingerprint,
                                       "params": spec.params, "published_at": time.time(), **meta})
        entry = self.entry(spec)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():  # an incomplete leftover without META: never trusted, replace it
            shutil.rmtree(entry)
        os.rename(tmp, entry)
        return entry

    @staticmethod
    def discard(tmp: Path) -> None:
        """Removes a work folder of a stage that did not finish."""
        shutil.rmtree(tmp, ignore_errors=True)

    def meta(self, entry: Path) -> dict[str, Any]:
        """Reads an entry's metadata."""
        return json.loads((entry / META).read_text())
