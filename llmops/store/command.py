"""Keeps the stage store manageable: `python -m llmops.store list | gc | verify`.

    python -m llmops.store list                # entries: kind, fingerprint, size, age, state, why
    python -m llmops.store gc --dry-run        # what gc would remove and keep, and why
    python -m llmops.store gc                  # remove what no run may still need
    python -m llmops.store gc --older-than 0 --force   # no grace period; forget missing runs
    python -m llmops.store verify [--repair]   # check every file's hash; move bad entries aside
    python -m llmops.store list --store /shared/llmops-store --runs /shared/runs

Every run records its folder and the entries it uses in the store's registry (`.runs/`), as it
goes. gc keeps an entry a readable run folder uses (manifest or `stages/` links), an entry of a run
whose folder is missing or whose manifest is unreadable (until `--force`), and anything younger
than `--older-than` (default 1d). Run folders found under `--runs` count too. Unfinished `.tmp/`
work no job holds is removed; `.work/` checkpoints and `.corrupt/` entries follow the same rules as
entries.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import Timeout

from llmops.store.cas import META, Store
from llmops.store.gc import (
    DEFAULT_GRACE,
    REMOVABLE,
    classify,
    folder_size,
    gc,
    human_age,
    parse_age,
)

__all__ = ["folder_size", "human_age", "main", "verify"]


def default_store() -> Path:
    """Returns the store folder the config uses by default ($LLMOPS_STORE or outputs/store)."""
    return Path(os.environ.get("LLMOPS_STORE", "outputs/store"))


def human_size(n: float) -> str:
    """Formats bytes as '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def verify(store: Store, repair: bool = False) -> list[dict[str, Any]]:
    """Checks every entry's files against their recorded sizes and hashes.

    Args:
        store: The store.
        repair: Move each bad entry aside to .corrupt/ (under its lock, after checking it again)
            so the next run rebuilds it.

    Returns:
        One row per entry that is bad or has no hashes: path, kind, fingerprint, state, why and
        action (what --repair did).
    """
    rows = []
    for entry in store.entries():
        check = store.check(entry, full=True)
        if check.state == "ok":
            continue
        why = "; ".join(check.problems) or "no content hashes (published by an older llmops)"
        row = {"path": entry, "kind": entry.parent.name, "fingerprint": entry.name,
               "state": check.state, "why": why, "action": ""}
        if repair and check.state == "bad":
            row["action"] = _move_aside(store, entry, why)
        rows.append(row)
    return rows


def _move_aside(store: Store, entry: Path, why: str) -> str:
    lock = store.lock_for(entry.name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return "not moved: a job holds its lock; run verify again later"
    try:
        if not (entry / META).is_file() or store.check(entry, full=True).state != "bad":
            return "not moved: another job replaced it meanwhile"
        return f"moved aside to {_show(store.move_aside(entry, why))}"
    finally:
        lock.release()


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _table(rows: list[dict], title: str, columns: Sequence[str]):  # -> rich.table.Table
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in ("size", "age") else "left",
                         overflow="fold")
    for r in rows:
        cells = {"kind": r["kind"], "fingerprint": r["fingerprint"][:12],
                 "size": human_size(r.get("bytes", 0)), "age": human_age(r.get("age_s", 0)),
                 "state": r["state"], "why": r.get("why") or "-"}
        table.add_row(*(cells[c] for c in columns))
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmops.store", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "list entries with sizes, state and why"),
                       ("gc", "remove what no run may still need, say what stays and why"),
                       ("verify", "check every entry's content hashes; exit 1 if one is bad")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--store", type=Path, default=default_store(),
                       help="store folder (default: $LLMOPS_STORE or outputs/store)")
        if name == "verify":
            p.add_argument("--repair", action="store_true",
                           help="move bad entries aside to .corrupt/; the next run rebuilds them")
            continue
        p.add_argument("--runs", type=Path, action="append", default=[],
                       help="also count run folders found under this folder (repeatable)")
        p.add_argument("--older-than", type=_age, default=DEFAULT_GRACE, metavar="AGE",
                       help=f"grace period: keep anything younger (default {DEFAULT_GRACE}; "
                            "e.g. 12h, 7d, 0)")
        if name == "gc":
            p.add_argument("--dry-run", action="store_true", help="show, remove nothing")
            p.add_argument("--force", action="store_true",
                           help="also drop entries of runs whose folder is missing or whose "
                                "manifest is unreadable, and forget those runs")
    return parser


def _age(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m llmops.store`."""
    from llmops.compiler.render import plain_console

    args = _parser().parse_args(argv)
    # Piped output keeps each row on one line (paths in `why` can be long), so grep finds them.
    console = plain_console(1000)  # names as they are
    if not args.store.is_dir():
        print(f"no store at {args.store}: nothing to {args.command}. Pass --store DIR "
              "(or set LLMOPS_STORE) to point at another one.", file=sys.stderr)
        return 0
    store = Store(args.store)
    if args.command == "verify":
        checked = sum(1 for _ in store.entries())
        rows = verify(store, repair=args.repair)
        bad = [r for r in rows if r["state"] == "bad"]
        if rows:
            console.print(_table(rows, "entries that failed or could not be checked",
                                 ("kind", "fingerprint", "state", "why")))
        for row in rows:
            if row["action"]:
                console.print(f"{_show(row['path'])}: {row['action']}")
        console.print(f"verify checked {checked} entries: {len(bad)} bad, "
                      f"{len(rows) - len(bad)} without hashes.")
        if bad and not args.repair:
            console.print("Move the bad ones aside (the next run rebuilds them): "
                          f"python -m llmops.store verify --repair --store {_show(args.store)}")
        return 1 if bad else 0
    if args.command == "list":
        rows = classify(store, args.runs, args.older_than)
        console.print(_table(rows, f"store {_show(args.store.resolve())}",
                             ("kind", "fingerprint", "size", "age", "state", "why")))
        total = sum(r["bytes"] for r in rows)
        loose = sum(r["bytes"] for r in rows if r["state"] in REMOVABLE)
        console.print(f"{len(rows)} folders, {human_size(total)}; gc would free "
                      f"{human_size(loose)}.")
        return 0
    removed, kept = gc(store, args.runs, args.older_than, args.force, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    columns = ("kind", "fingerprint", "size", "age", "state", "why")
    if removed:
        console.print(_table(removed, f"gc {verb}", columns[:-1]))
    if kept:
        console.print(_table(kept, "gc keeps", columns))
    console.print(f"gc {verb} {len(removed)} folders, "
                  f"{human_size(sum(r['bytes'] for r in removed))}; kept {len(kept)}.")
    if any(r["why"].startswith(("run folder missing", "manifest unreadable", "run record"))
           for r in kept):
        console.print("Some runs are missing or unreadable: if you moved them, pass --runs DIR "
                      "where they are now; to drop their entries, gc --force.")
    return 0

