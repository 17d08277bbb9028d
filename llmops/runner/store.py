"""The content-addressed stage store: finished outputs keyed by fingerprint.

An entry is published by one atomic directory rename after the stage succeeded, so an entry that
exists is complete. A file lock per fingerprint makes concurrent jobs wait for each other instead
of doing the same work twice. Resumable stages (sft) work in a stable folder per fingerprint,
`.work/<kind>-<fp24>/`, so a rerun after a crash finds their checkpoints; anything under `.work/`
or `.tmp/` is never trusted as an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from llmops.compiler.plan import StageSpec
from llmops.runner.files import write_json_atomic

META = "_stage.json"
FP_LEN = 24
_HIDDEN = (".locks", ".tmp", ".work", ".runs", ".trash")


class Store:
    """A folder of finished stage outputs: <root>/<kind>/<fingerprint[:24]>/."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, spec: StageSpec) -> Path:
        """Returns where the stage's finished output lives (whether or not it exists yet)."""
        return self.root / spec.kind / spec.fingerprint[:FP_LEN]

    def lookup(self, spec: StageSpec) -> Path | None:
        """Returns the finished entry for this stage, or None."""
        entry = self.entry(spec)
        return entry if (entry / META).is_file() else None

    def lock(self, spec: StageSpec) -> FileLock:
        """Returns the inter-process lock guarding this fingerprint."""
        return self.lock_for(spec.fingerprint[:FP_LEN])

    def lock_for(self, fp24: str) -> FileLock:
        """Returns the lock of a fingerprint prefix (the OS releases it when its holder dies)."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{fp24}.lock"))

    def new_tmp(self, spec: StageSpec) -> Path:
        """Creates an empty private work folder on the store's filesystem."""
        name = f"{spec.kind}-{spec.fingerprint[:FP_LEN]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / ".tmp" / name
        tmp.mkdir(parents=True)
        return tmp

    def work_dir(self, spec: StageSpec) -> Path:
        """Returns the stable work folder of a resumable stage (call with the lock held)."""
        work = self.root / ".work" / f"{spec.kind}-{spec.fingerprint[:FP_LEN]}"
        work.mkdir(parents=True, exist_ok=True)
        return work

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

    # -- run registry: which run folders use the store (for `llmops.store list/gc`) --

    def register_run(self, run_dir: Path) -> None:
        """Records that a run folder uses this store, so gc can find its manifest."""
        run_dir = Path(run_dir).resolve()
        key = hashlib.sha1(str(run_dir).encode()).hexdigest()[:16]
        write_json_atomic(self.root / ".runs" / f"{key}.json", {"run_dir": str(run_dir)})

    def run_dirs(self) -> list[Path]:
        """Returns the registered run folders that still exist."""
        out = []
        for path in sorted((self.root / ".runs").glob("*.json")):
            try:
                run_dir = Path(json.loads(path.read_text())["run_dir"])
            except (OSError, ValueError, KeyError):
                continue
            if run_dir.is_dir():
                out.append(run_dir)
        return out

    def entries(self) -> Iterator[Path]:
        """Yields every published entry folder."""
        if not self.root.is_dir():
            return
        for kind in sorted(self.root.iterdir()):
            if kind.name in _HIDDEN or not kind.is_dir():
                continue
            for entry in sorted(kind.iterdir()):
                if (entry / META).is_file():
                    yield entry

    def scratch(self) -> Iterator[Path]:
        """Yields the folders under .tmp/ and .work/ (unfinished or resumable work)."""
        for sub in (".tmp", ".work", ".trash"):
            folder = self.root / sub
            if folder.is_dir():
                yield from sorted(p for p in folder.iterdir() if p.is_dir())

    def in_use(self, folder: Path) -> bool:
        """Tells whether some process holds the lock of a scratch folder's fingerprint."""
        parts = folder.name.split("-")
        fp24 = next((p for p in parts if len(p) == FP_LEN), None)
        if folder.parent.name == ".trash" or fp24 is None:
            return False
        lock = self.lock_for(fp24)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def remove(self, folder: Path) -> None:
        """Removes an entry or scratch folder: first renamed away (atomic), then deleted."""
        trash = self.root / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, target)
        shutil.rmtree(target, ignore_errors=True)


def latest_checkpoint(work: Path) -> tuple[Path, int] | None:
    """Returns the newest complete `checkpoints/checkpoint-N` in a work folder and its step.

    A checkpoint counts when its trainer_state.json (written last by the Trainer) parses.
    """
    found = []
    for ckpt in Path(work).glob("checkpoints/checkpoint-*"):
        try:
            step = int(ckpt.name.rsplit("-", 1)[1])
            state = json.loads((ckpt / "trainer_state.json").read_text())
        except (ValueError, OSError, IndexError):
            continue
        found.append((step, int(state.get("global_step", step)), ckpt))
    if not found:
        return None
    _, step, ckpt = max(found)
    return ckpt, step
