"""The content-addressed stage store: finished outputs keyed by fingerprint.

An entry is published by one atomic directory rename after the stage succeeded; its `_stage.json`
records the size and xxh3 hash of every file, so a reuse can tell a damaged entry from a good one.
A damaged entry is moved aside to `.corrupt/` (kept for inspection) and rebuilt, never used. A file
lock per fingerprint makes concurrent jobs wait for each other instead of doing the same work twice;
checks, moves and removals of an entry happen under it. Resumable stages (sft) work in a stable
folder per fingerprint, `.work/<kind>-<fp24>/`, so a rerun after a crash finds their checkpoints;
anything under `.work/` or `.tmp/` is never trusted as an entry. The run registry (`.runs/`) records
every run folder and the entries it uses, so gc keeps them even when the folder moves or breaks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from llmops.core.plan import StageSpec
from llmops.files import share_like_open, write_json
from llmops.store import registry
from llmops.store.integrity import HASH, checkpoint_problem, entry_problems, record_files

META = "_stage.json"
ASIDE = "_moved_aside.json"
FP_LEN = 24
_HIDDEN = (".locks", ".tmp", ".work", ".runs", ".trash", ".corrupt")

log = logging.getLogger("llmops")


@dataclass(frozen=True)
class EntryCheck:
    """The verdict on one entry: ok, bad (with what failed) or unverified (no hashes recorded)."""

    state: str
    problems: list[str] = field(default_factory=list)


def key_of(kind: str, fingerprint: str) -> str:
    """Returns the registry's name of an entry: "kind/fp24"."""
    return f"{kind}/{fingerprint[:FP_LEN]}"


class Store:
    """A folder of finished stage outputs: <root>/<kind>/<fingerprint[:24]>/."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, spec: StageSpec) -> Path:
        """Returns where the stage's finished output lives (whether or not it exists yet)."""
        return self.root / spec.kind / spec.fingerprint[:FP_LEN]

    def lookup(self, spec: StageSpec) -> Path | None:
        """Returns the published entry for this stage, or None (check it before use)."""
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
        """Records every file's size and hash, then moves the folder into place with one rename.

        Every file a library wrote private (0600: safetensors) gets the mode `open()` gives,
        0666 less the umask (llmops.files.share_like_open): weights, adapters, checkpoints and
        release copies alike. Call with the lock held; returns the entry.
        """
        share_like_open(tmp)
        files = record_files(tmp, skip=META)
        write_json(tmp / META, {"kind": spec.kind, "fingerprint": spec.fingerprint,
                                       "params": spec.params, "published_at": time.time(),
                                       **meta, "hash": HASH, "files": files})
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

    def check(self, entry: Path, full: bool) -> EntryCheck:
        """Compares an entry's files with the record made at publish.

        Args:
            entry: A published entry folder.
            full: Also compare content hashes; otherwise sizes (and links) only.
        """
        try:
            meta = self.meta(entry)
        except (OSError, ValueError) as exc:
            return EntryCheck("bad", [f"{META}: unreadable ({type(exc).__name__})"])
        files = meta.get("files") if isinstance(meta, dict) else None
        if files is None:
            return EntryCheck("unverified")
        problems = entry_problems(entry, files, full)
        return EntryCheck("bad", problems) if problems else EntryCheck("ok")

    def move_aside(self, folder: Path, reason: str) -> Path:
        """Moves a damaged entry or checkpoint to .corrupt/ (call with its lock held).

        Returns:
            Its new place; `_moved_aside.json` there says where it came from and why.
        """
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = "-".join(p.lstrip(".") for p in folder.relative_to(self.root).parts)
        target = self.root / ".corrupt" / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = folder.resolve()
        os.rename(folder, target)
        write_json(target / ASIDE, {"from": str(origin), "reason": reason,
                                           "moved_at": time.time()})
        return target

    def resume_point(self, work: Path) -> tuple[Path, int] | None:
        """Returns the newest complete checkpoint of a work folder and its step (lock held).

        Checkpoints newer than it that are truncated or unreadable are moved aside (named in a
        warning), so the trainer never sees them.
        """
        return latest_checkpoint(work, set_aside=self.move_aside)

    # -- run registry: which run folders use which entries (for `llmops.store list/gc`) --

    def register_run(self, run_dir: Path) -> None:
        """Records that a run folder uses this store (see llmops.store.registry)."""
        registry.register(self.root, run_dir)

    def record_use(self, run_dir: Path, spec: StageSpec) -> None:
        """Adds a stage's entry to its run's record (before the run looks it up or builds it)."""
        registry.register(self.root, run_dir, (key_of(spec.kind, spec.fingerprint),))

    def run_records(self) -> list[registry.RunRecord]:
        """Returns every record of the run registry, readable or not."""
        return registry.records(self.root)

    def owns(self, path: Path) -> bool:
        """Tells whether path lies inside the store: no link on the way from the root to it (the
        path itself included), and its resolved form under the resolved root.

        A store folder (`.tmp`, `.work`, `.runs`, an entry, ...) that is a symbolic link leads
        outside what the store owns, so nothing under it is the store's to delete.
        """
        path = Path(path)
        try:
            rel = path.relative_to(self.root)
            if not rel.parts or ".." in rel.parts:
                return False
            here = self.root
            for part in rel.parts:
                here = here / part
                if here.is_symlink():
                    return False
            return path.resolve().is_relative_to(self.root.resolve())
        except (ValueError, OSError):
            return False

    def linked_away(self) -> list[Path]:
        """Returns the store's own folders and entries that are symbolic links (gc skips them)."""
        if not self.root.is_dir():
            return []
        out = [self.root / s for s in _HIDDEN if (self.root / s).is_symlink()]
        for kind in sorted(self.root.iterdir()):
            if kind.name in _HIDDEN:
                continue
            if kind.is_symlink():
                out.append(kind)
            elif kind.is_dir():
                out += [e for e in sorted(kind.iterdir()) if e.is_symlink()]
        for sub in (".tmp", ".work", ".corrupt", ".trash"):
            folder = self.root / sub
            if folder.is_dir() and not folder.is_symlink():
                out += [p for p in sorted(folder.iterdir()) if p.is_symlink()]
        return out

    def entries(self) -> Iterator[Path]:
        """Yields every published entry folder (links, and what lies behind them, are skipped)."""
        if not self.root.is_dir():
            return
        for kind in sorted(self.root.iterdir()):
            if kind.name in _HIDDEN or kind.is_symlink() or not kind.is_dir():
                continue
            for entry in sorted(kind.iterdir()):
                if not entry.is_symlink() and (entry / META).is_file():
                    yield entry

    def scratch(self) -> Iterator[Path]:
        """Yields the folders under .tmp/, .work/, .corrupt/ and .trash/ (not through links)."""
        for sub in (".tmp", ".work", ".corrupt", ".trash"):
            folder = self.root / sub
            if folder.is_dir() and not folder.is_symlink():
                yield from sorted(p for p in folder.iterdir()
                                  if p.is_dir() and not p.is_symlink())

    def in_use(self, folder: Path) -> bool:
        """Tells whether some process holds the lock of a scratch folder's fingerprint."""
        fp24 = fingerprint_of(folder)
        if folder.parent.name in (".trash", ".corrupt") or fp24 is None:
            return False
        lock = self.lock_for(fp24)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def remove(self, folder: Path) -> None:
        """Removes an entry or scratch folder: first renamed away (atomic), then deleted.

        Raises:
            OSError: The folder (or `.trash`) does not lie inside the store (see `owns`): a link
                to elsewhere is never followed, and nothing outside the store is deleted.
        """
        trash = self.root / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        for path in (folder, trash):
            if not self.owns(path):
                raise OSError(f"{path} does not lie inside the store {self.root} (a symbolic "
                              "link?); gc removes only what does")
        target = trash / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, target)
        shutil.rmtree(target, ignore_errors=True)


def fingerprint_of(folder: Path) -> str | None:
    """Returns the fingerprint prefix in an entry's or scratch folder's name, if any."""
    if len(folder.name) == FP_LEN:
        return folder.name
    return next((p for p in folder.name.split("-") if len(p) == FP_LEN), None)


def scan_checkpoints(work: Path) -> list[tuple[int, Path, str | None]]:
    """Returns (step, folder, problem or None) for each `checkpoints/checkpoint-N`, newest first."""
    found = []
    for ckpt in Path(work).glob("checkpoints/checkpoint-*"):
        try:
            step = int(ckpt.name.rsplit("-", 1)[1])
        except (ValueError, IndexError):
            continue
        problem = checkpoint_problem(ckpt)
        if problem is None:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            step = int(state.get("global_step", step))
        found.append((step, ckpt, problem))
    return sorted(found, key=lambda f: (f[0], f[1].name), reverse=True)


def latest_checkpoint(work: Path, set_aside: Callable[[Path, str], Path] | None = None
                      ) -> tuple[Path, int] | None:
    """Returns the newest complete `checkpoints/checkpoint-N` in a work folder and its step.

    A checkpoint counts when all its files are whole (see `checkpoint_problem`); a truncated or
    unreadable newer one is skipped with a warning, so training resumes from the previous complete
    one.

    Args:
        work: The stage's work folder.
        set_aside: Called with each skipped checkpoint and its problem; returns where it went.
    """
    for step, ckpt, problem in scan_checkpoints(work):
        if problem is None:
            return ckpt, step
        where = f"moved aside to {set_aside(ckpt, problem)}" if set_aside else "skipped"
        log.warning("checkpoint %s is incomplete (%s): %s; resuming from the previous complete "
                    "one.", ckpt, problem, where)
    return None
