"""gc never deletes through a symbolic link: what a link in the store points at survives.

The store's own folders (`.tmp`, `.work`, `.corrupt`, `.runs`, `.trash`), a kind folder and single
entries or scratch folders are made real links to folders outside the store full of files; gc with
the default grace, with `--older-than 0` and with `--force` removes none of those files, and still
removes the store's own leftovers. No pipeline run: the store is laid out by hand as cas.py does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llmops.store.cas import META, Store
from llmops.store.command import main

FP = "a" * 24
FP2 = "b" * 24


def _outside(root: Path, name: str) -> dict[Path, bytes]:
    """Fills a folder outside the store with sub-folders, JSON files and a nested file."""
    files = {}
    for sub in ("one", f"data-{FP}-1-abcd1234", f"sft-{FP2}"):
        for leaf in ("a.txt", "record.json", f"{META}"):
            path = root / name / sub / leaf
            path.parent.mkdir(parents=True, exist_ok=True)
            content = json.dumps({"keep": str(path)}).encode()
            path.write_bytes(content)
            files[path] = content
    for leaf in ("x.json", "y.json"):
        path = root / name / leaf
        content = json.dumps({"run_dir": str(root / "gone"), "stages": [f"data/{FP}"]}).encode()
        path.write_bytes(content)
        files[path] = content
    old = time.time() - 30 * 86400
    for path in files:
        os.utime(path, (old, old))
        os.utime(path.parent, (old, old))
    return files


def _gc(capsys, store: Path, *args: str) -> str:
    assert main(["gc", "--store", str(store), *args]) == 0
    return capsys.readouterr().out


def _survive(files: dict[Path, bytes]) -> None:
    missing = [str(p) for p, content in files.items()
               if not p.is_file() or p.read_bytes() != content]
    assert not missing, f"gc deleted or changed files outside the store: {missing[:5]}"


@pytest.mark.parametrize("folder", [".tmp", ".work", ".corrupt", ".runs", ".trash"])
def test_a_store_folder_linked_outside_keeps_every_file_it_points_at(tmp_path, capsys, folder):
    store = tmp_path / "store"
    store.mkdir()
    files = _outside(tmp_path, "precious")
    (store / folder).symlink_to(tmp_path / "precious", target_is_directory=True)
    for args in ((), ("--older-than", "0"), ("--older-than", "0", "--force")):
        out = _gc(capsys, store, *args)
        _survive(files)
        assert "gc never deletes through a link" in out
    assert (store / folder).is_symlink()


def test_a_linked_run_registry_is_not_read_and_keeps_every_entry_until_force(tmp_path, capsys):
    store = tmp_path / "store"
    entry = store / "data" / FP
    entry.mkdir(parents=True)
    (entry / META).write_text(json.dumps({"published_at": time.time() - 30 * 86400}))
    files = _outside(tmp_path, "registry")
    (store / ".runs").symlink_to(tmp_path / "registry", target_is_directory=True)
    out = _gc(capsys, store, "--older-than", "0")
    assert "is a symbolic link to" in out and "gc reads and deletes nothing through it" in out
    assert entry.is_dir()
    _survive(files)
    out = _gc(capsys, store, "--older-than", "0", "--force")  # --force: the entry may go
    assert not entry.exists()
    _survive(files)


def test_linked_entries_and_scratch_folders_are_kept_and_real_leftovers_still_go(tmp_path, capsys):
    store = tmp_path / "store"
    files = _outside(tmp_path, "elsewhere")
    for sub in (".tmp", ".work", ".corrupt"):
        (store / sub).mkdir(parents=True)
        (store / sub / f"data-{FP}-9-{sub[1:]}").symlink_to(tmp_path / "elsewhere" / "one")
    (store / "data").mkdir()
    (store / "data" / FP).symlink_to(tmp_path / "elsewhere" / f"sft-{FP2}")
    (store / "sft").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    # a stale leftover that is the store's own: gc still removes it
    leftover = store / ".tmp" / f"eval-{FP2}-7-deadbeef"
    (leftover / "inner").mkdir(parents=True)
    (leftover / "inner" / "w.bin").write_bytes(b"x" * 10)
    # a nested link inside a real leftover: the folder goes, what it points at stays
    (leftover / "inner" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = _gc(capsys, store, "--older-than", "0", "--force")
    _survive(files)
    assert not leftover.exists()
    assert out.count("gc never deletes through a link") == 5
    assert (store / "data" / FP).is_symlink() and (store / "sft").is_symlink()


def test_store_owns_only_what_resolves_inside_it(tmp_path):
    store = Store(tmp_path / "store")
    (tmp_path / "store" / ".tmp" / "x").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "store" / ".work").symlink_to(tmp_path / "out", target_is_directory=True)
    assert store.owns(tmp_path / "store" / ".tmp" / "x")
    assert not store.owns(tmp_path / "store" / ".work" / "x")
    assert not store.owns(tmp_path / "store" / ".tmp" / ".." / ".." / "out")
    assert not store.owns(tmp_path / "out")
    assert not store.owns(tmp_path / "store")
    with pytest.raises(OSError, match="does not lie inside the store"):
        store.remove(tmp_path / "store" / ".work")
    assert (tmp_path / "out").is_dir()


def test_a_linked_store_root_is_still_the_store(tmp_path, capsys):
    """A store reached through a link (LLMOPS_STORE=/link) is the user's choice: gc works in it."""
    real = tmp_path / "real"
    leftover = real / ".tmp" / f"data-{FP}-1-00000000"
    leftover.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    out = _gc(capsys, tmp_path / "link")
    assert "gc removed 1 folders" in out and not leftover.exists()
