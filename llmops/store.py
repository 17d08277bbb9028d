"""Keeps the stage store manageable: `python -m llmops.store list | gc [--dry-run]`.

    python -m llmops.store list            # entries: kind, fingerprint, size, age, runs using it
    python -m llmops.store gc --dry-run    # what gc would remove, and the space it frees
    python -m llmops.store gc              # remove it
    python -m llmops.store list --store /shared/llmops-store --runs /shared/runs

An entry is referenced when a run folder's manifest.json names its fingerprint. Run folders are
found through the store's own registry (every run records its folder there) and under `--runs`
folders. gc removes unreferenced entries and unfinished work (.tmp/, .work/) whose lock no running
job holds; removing a run folder therefore frees its entries at the next gc. Deleting a .work/
folder drops checkpoints an interrupted training could have resumed from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llmops.runner.store import FP_LEN, META, Store


def default_store() -> Path:
    """Returns the store folder the config uses by default ($LLMOPS_STORE or outputs/store)."""
    return Path(os.environ.get("LLMOPS_STORE", "outputs/store"))


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


def human_size(n: float) -> str:
    """Formats bytes as '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_age(seconds: float) -> str:
    """Formats an age as '42s', '5m', '3h' or '2d'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def references(store: Store, roots: Sequence[Path] = ()) -> dict[tuple[str, str], list[Path]]:
    """Maps (kind, fingerprint[:24]) to the run folders whose manifest names it."""
    run_dirs = set(store.run_dirs())
    for root in roots:
        run_dirs |= {m.parent.resolve() for m in Path(root).glob("**/manifest.json")}
    refs: dict[tuple[str, str], list[Path]] = {}
    for run_dir in sorted(run_dirs):
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        for stage in (manifest.get("stages") or {}).values():
            fp = str(stage.get("fingerprint", ""))[:FP_LEN]
            if fp:
                refs.setdefault((str(stage.get("kind")), fp), []).append(run_dir)
    return refs


def _published_at(store: Store, entry: Path) -> float:
    try:
        return float(store.meta(entry).get("published_at") or 0)
    except (OSError, ValueError):
        return (entry / META).stat().st_mtime


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def list_store(store: Store, roots: Sequence[Path] = ()) -> list[dict]:
    """Returns one row per entry and scratch folder: kind, fingerprint, bytes, age, runs, state."""
    refs = references(store, roots)
    now = time.time()
    rows = []
    for entry in store.entries():
        kind, fp = entry.parent.name, entry.name
        runs = refs.get((kind, fp), [])
        rows.append({"path": entry, "kind": kind, "fingerprint": fp, "bytes": folder_size(entry),
                     "age_s": now - _published_at(store, entry), "runs": runs,
                     "state": "referenced" if runs else "unreferenced"})
    for folder in store.scratch():
        kind, _, rest = folder.name.partition("-")
        busy = store.in_use(folder)
        rows.append({"path": folder, "kind": f"{kind} ({folder.parent.name[1:]})",
                     "fingerprint": rest[:FP_LEN], "bytes": folder_size(folder),
                     "age_s": now - folder.stat().st_mtime, "runs": [],
                     "state": "in use" if busy else "stale"})
    return rows


def gc(store: Store, roots: Sequence[Path] = (), dry_run: bool = False) -> list[dict]:
    """Removes unreferenced entries and stale scratch folders; returns the rows removed."""
    removed = []
    for row in list_store(store, roots):
        if row["state"] not in ("unreferenced", "stale"):
            continue
        if not dry_run:
            try:
                store.remove(row["path"])
            except OSError:
                continue  # someone else removed or published it meanwhile
        removed.append(row)
    if not dry_run:
        for record in (store.root / ".runs").glob("*.json"):
            try:
                gone = not Path(json.loads(record.read_text())["run_dir"]).is_dir()
            except (OSError, ValueError, KeyError):
                gone = True
            if gone:
                record.unlink(missing_ok=True)
        shutil.rmtree(store.root / ".trash", ignore_errors=True)
    return removed


def _table(rows: list[dict], title: str):  # -> rich.table.Table
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (("kind", "left"), ("fingerprint", "left"), ("size", "right"),
                          ("age", "right"), ("state", "left"), ("runs", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        runs = r["runs"]
        shown = ", ".join(_show(p) for p in runs[:2]) + (f" +{len(runs) - 2}" if len(runs) > 2
                                                          else "")
        table.add_row(r["kind"], r["fingerprint"][:12], human_size(r["bytes"]),
                      human_age(r["age_s"]), r["state"], shown or "-")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m llmops.store`."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m llmops.store", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "list entries with sizes and the runs using them"),
                       ("gc", "remove entries no run references, and stale unfinished work")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--store", type=Path, default=default_store(),
                       help="store folder (default: $LLMOPS_STORE or outputs/store)")
        p.add_argument("--runs", type=Path, action="append", default=[],
                       help="also count run folders found under this folder (repeatable)")
        if name == "gc":
            p.add_argument("--dry-run", action="store_true", help="show, remove nothing")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    if not args.store.is_dir():
        print(f"no store at {args.store}: nothing to {args.command}. Pass --store DIR "
              "(or set LLMOPS_STORE) to point at another one.", file=sys.stderr)
        return 0
    store = Store(args.store)
    if args.command == "list":
        rows = list_store(store, args.runs)
        console.print(_table(rows, f"store {_show(args.store.resolve())}"))
        total = sum(r["bytes"] for r in rows)
        loose = sum(r["bytes"] for r in rows if r["state"] in ("unreferenced", "stale"))
        console.print(f"{len(rows)} folders, {human_size(total)}; gc would free "
                      f"{human_size(loose)}.")
        return 0
    rows = gc(store, args.runs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    if rows:
        console.print(_table(rows, f"gc {verb}"))
    console.print(f"gc {verb} {len(rows)} folders, {human_size(sum(r['bytes'] for r in rows))}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
