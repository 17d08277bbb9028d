"""What `python -m llmops.store gc` may remove, and why it keeps the rest.

An entry is removed only when nothing may still need it: no readable run folder uses it (its
manifest names it or its `stages/` links point at it), no registered run whose folder is missing
or whose manifest is unreadable used it (unless `force`), and it is older than the grace period.
Unfinished work: `.tmp/` leftovers no job holds are removed at once; `.work/` checkpoints and
`.corrupt/` entries follow the same rules as entries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import Timeout

from llmops.store.cas import FP_LEN, META, Store, fingerprint_of, key_of

DEFAULT_GRACE = "1d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
REMOVABLE = ("unreferenced", "stale")


def folder_size(path: Path) -> int:
    """Returns the bytes of the files under a folder (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human_age(seconds: float) -> str:
    """Formats an age as '42s', '5m', '3h' or '2d'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def parse_age(text: str) -> float:
    """Returns the seconds of an age such as '0', '90s', '30m', '12h', '1d' or '2w'.

    Raises:
        ValueError: The text is not a number followed by one of s, m, h, d, w.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"'{text}' is not an age: use a number and a unit (s, m, h, d, w), "
                         "e.g. 12h or 7d; 0 means no grace period.")
    return float(match[1]) * _UNITS[match[2] or "s"]


@dataclass
class References:
    """Who may still need which entry ("kind/fp24")."""

    used: dict[str, list[str]] = field(default_factory=dict)  # by readable run folders
    doubtful: dict[str, list[str]] = field(default_factory=dict)  # missing or broken runs
    anything: list[str] = field(default_factory=list)  # runs that may need any entry
    forgettable: list[Path] = field(default_factory=list)  # records `--force` drops


def _manifest_uses(run_dir: Path) -> set[str] | None:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stages = manifest["stages"].values()
        return {key_of(str(s["kind"]), str(s["fingerprint"])) for s in stages}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _linked(run_dir: Path) -> set[str]:
    """Returns the entries a run folder's `stages/` links point at."""
    out = set()
    stages = run_dir / "stages"
    for link in sorted(stages.iterdir()) if stages.is_dir() else ():
        if link.is_symlink():
            target = Path(link.readlink())
            out.add(f"{target.parent.name}/{target.name}")
    return out


def references(store: Store, roots: Sequence[Path] = ()) -> References:
    """Collects what the registry's runs and the run folders under roots use."""
    refs = References()

    def use(keys: set[str], how: str) -> None:
        for key in sorted(keys):
            if how not in refs.used.get(key, []):
                refs.used.setdefault(key, []).append(how)

    def doubt(keys: frozenset[str], reason: str) -> None:
        for key in sorted(keys):
            refs.doubtful.setdefault(key, []).append(reason)

    seen: set[Path] = set()
    runs = store.root / ".runs"
    if runs.is_symlink():  # read nothing through it: every entry is kept until --force
        refs.anything.append(f"the run registry {runs} is a symbolic link to "
                             f"{os.readlink(runs)}; gc reads and deletes nothing through it")
    for rec in [] if runs.is_symlink() else store.run_records():
        if rec.run_dir is None:
            refs.anything.append(f"run record unreadable: {rec.file} ({rec.error})")
            refs.forgettable.append(rec.file)
            continue
        run_dir, seen_here = rec.run_dir, rec.run_dir.is_dir()
        manifest = _manifest_uses(run_dir) if seen_here else None
        if manifest is not None:
            use(manifest | (rec.stages or frozenset()), f"used by {run_dir}")
        elif seen_here:
            reason = f"manifest unreadable: {run_dir / 'manifest.json'}"
            if rec.stages is None:
                refs.anything.append(f"{reason} (its record lists no stages)")
            else:
                doubt(rec.stages, reason)
        else:
            reason = f"run folder missing: {run_dir}"
            refs.forgettable.append(rec.file)
            if rec.stages is None:
                refs.anything.append(f"{reason} (its record lists no stages)")
            else:
                doubt(rec.stages, reason)
        if seen_here:  # a readable folder's links never dangle
            use(_linked(run_dir), f"linked from {run_dir / 'stages'}" if manifest is None
                else f"used by {run_dir}")
            seen.add(run_dir.resolve())
    for root in roots:
        for path in sorted(Path(root).glob("**/manifest.json")):
            run_dir = path.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            manifest = _manifest_uses(run_dir)
            if manifest is None:
                use(_linked(run_dir), f"linked from {run_dir / 'stages'}")
                refs.anything.append(f"manifest unreadable: {path}")
            else:
                use(manifest | _linked(run_dir), f"used by {run_dir}")
    return refs


def _published_at(store: Store, entry: Path) -> float:
    try:
        return float(store.meta(entry).get("published_at") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return (entry / META).stat().st_mtime


def _verdict(key: str, age_s: float, refs: References, grace_s: float, force: bool
             ) -> tuple[str, str]:
    if key in refs.used:
        hows = refs.used[key]
        return "referenced", hows[0] + (f" (+{len(hows) - 1} more)" if len(hows) > 1 else "")
    if not force and key in refs.doubtful:
        return "kept", "; ".join(refs.doubtful[key])
    if not force and refs.anything:
        more = len(refs.anything) - 1
        return "kept", refs.anything[0] + (f" (+{more} more)" if more else "")
    if age_s < grace_s:
        return "kept", f"younger than grace period ({human_age(age_s)} < {human_age(grace_s)})"
    return "unreferenced", ""


def classify(store: Store, roots: Sequence[Path] = (), grace_s: float = 86400.0,
             force: bool = False, refs: References | None = None) -> list[dict[str, Any]]:
    """Returns one row per entry and scratch folder: path, kind, fingerprint, age, state, why.

    States: referenced, kept, in use, unreferenced and stale (the last two removable).
    """
    refs = refs or references(store, roots)
    now = time.time()
    rows = []
    for entry in store.entries():
        kind, fp = entry.parent.name, entry.name
        age = now - _published_at(store, entry)
        state, why = _verdict(f"{kind}/{fp}", age, refs, grace_s, force)
        rows.append({"path": entry, "key": f"{kind}/{fp}", "kind": kind, "fingerprint": fp,
                     "age_s": age,
                     "bytes": folder_size(entry), "state": state, "why": why})
    for folder in store.scratch():
        where = folder.parent.name
        kind, _, rest = folder.name.partition("-")
        fp = fingerprint_of(folder) or rest[:FP_LEN]
        age = now - folder.stat().st_mtime
        if store.in_use(folder):
            state, why = "in use", "a running job holds its lock"
        elif where == ".work":
            state, why = _verdict(f"{kind}/{fp}", age, refs, grace_s, force)
            state = "stale" if state == "unreferenced" else state
            why = f"checkpoints to resume from; {why}" if why else why
        elif where == ".corrupt" and age < grace_s:
            state, why = "kept", f"moved aside {human_age(age)} ago, for inspection"
        else:
            state, why = "stale", ""
        rows.append({"path": folder, "key": f"{kind}/{fp}" if where == ".work" else None,
                     "kind": f"{kind} ({where[1:]})", "fingerprint": fp,
                     "age_s": age, "bytes": folder_size(folder), "state": state, "why": why})
    for link in store.linked_away():
        try:
            target = os.readlink(link)
        except OSError:
            target = "?"
        rows.append({"path": link, "key": None, "kind": "link", "fingerprint": link.name,
                     "age_s": 0.0, "bytes": 0, "state": "kept",
                     "why": f"a symbolic link to {target}: gc never deletes through a link, "
                            "only what lies inside the store"})
    return rows


def _records(store: Store) -> dict[Path, tuple[int, int]]:
    """Returns each run record's (inode, mtime): an atomic rewrite changes the inode."""
    out: dict[Path, tuple[int, int]] = {}
    if (store.root / ".runs").is_symlink():
        return out
    for path in (store.root / ".runs").glob("*.json"):
        try:
            st = path.stat()
        except OSError:
            continue
        out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def _newly_used(store: Store, key: str, before: dict[Path, tuple[int, int]]) -> bool:
    """Tells whether a run record written since `before` lists the entry (or cannot be read)."""
    for path, stamp in _records(store).items():
        if before.get(path) == stamp:
            continue
        try:
            stages = json.loads(path.read_text()).get("stages")
        except (OSError, ValueError, AttributeError):
            return True
        if stages is None or key in stages:
            return True
    return False


def gc(store: Store, roots: Sequence[Path] = (), grace_s: float = 86400.0, force: bool = False,
       dry_run: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Removes what nothing may still need; returns (rows removed, rows kept).

    Each removal happens under the entry's lock, after checking that no run started using it
    since the references were collected.
    """
    before = _records(store)
    refs = references(store, roots)
    removed, kept = [], []
    for row in classify(store, roots, grace_s, force, refs):
        if row["state"] not in REMOVABLE:
            kept.append(row)
            continue
        if dry_run:
            removed.append(row)
            continue
        fp = fingerprint_of(row["path"])
        lock = store.lock_for(fp) if fp and row["path"].parent.name != ".corrupt" else None
        try:
            if lock is not None:
                lock.acquire(timeout=0)
        except Timeout:
            kept.append({**row, "state": "in use", "why": "a job took its lock during gc"})
            continue
        try:
            if row["key"] and _newly_used(store, row["key"], before):
                kept.append({**row, "state": "referenced", "why": "a run started using it"})
                continue
            store.remove(row["path"])
            removed.append(row)
        except OSError:
            continue  # someone else removed or replaced it meanwhile
        finally:
            if lock is not None:
                lock.release()
    if not dry_run:
        if force:
            for record in refs.forgettable:
                if store.owns(record):  # never a record reached through a linked .runs
                    record.unlink(missing_ok=True)
        if store.owns(store.root / ".trash"):
            shutil.rmtree(store.root / ".trash", ignore_errors=True)
    return removed, kept
