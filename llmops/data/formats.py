"""Names of the data formats a user may write, and the checks of a data path that need no reading.

The readers (``llmops.data.readers``) read every format into the canonical OpenAI chat form; this
module holds what the config layer needs before anything is read: the format names ``data.format``
accepts (``chat`` and ``instruct``, the names of earlier releases, are aliases of ``openai`` and
``alpaca``), and whether a path or glob names files the readers take, without opening any (a FIFO
would block). Pure Python.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llmops.data.names import FORMATS as READER_FORMATS
from llmops.data.names import KIND

#: Earlier names of formats, kept so that existing configs keep working.
ALIASES: dict[str, str] = {"chat": "openai", "instruct": "alpaca"}
#: Every value ``data.format`` (and a source's ``format``) accepts.
NAMES: tuple[str, ...] = ("auto", *READER_FORMATS, *ALIASES)
#: Formats whose rows are preference pairs (DPO).
PREFERENCE_FORMATS: tuple[str, ...] = tuple(f for f in READER_FORMATS if KIND[f] == "preference")


def reader_format(name: str) -> str:
    """Returns the readers' name of a format: an alias resolved, any other name unchanged."""
    return ALIASES.get(name, name)


def not_regular(path: str | Path) -> str | None:
    """Tells what is at path when it is there but is not a regular file, without opening it.

    Opening a FIFO would block until a writer comes, so only ``os.stat`` looks (links followed).

    Returns:
        None for a regular file or when nothing is there, else e.g. ``"a folder"``,
        ``"a FIFO (named pipe)"``.
    """
    try:
        mode = os.stat(Path(path).expanduser()).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def input_paths(path_or_glob: str | Path, key: str = "data.path") -> list[Path]:
    """Returns the files and ``save_to_disk`` folders a data path or glob names, sorted.

    Args:
        path_or_glob: A file, a folder written by ``Dataset.save_to_disk`` or a glob pattern.
        key: The config key the path came from, named in errors.

    Raises:
        ValueError: With a message that starts with ``key``, when nothing matches, a match is
            neither a file the readers take nor a dataset folder, or it is a FIFO, socket or
            device (never opened).
    """
    from llmops.data.convert import FormatError
    from llmops.data.readers import expand

    try:
        paths = expand(path_or_glob)
    except FormatError as exc:
        raise ValueError(str(exc).replace("data.path", key, 1)) from exc
    for p in paths:
        kind = not_regular(p)
        if kind is not None and kind != "a folder":
            raise ValueError(f"{key}: {p.resolve()} is {kind}, not a regular file. Point {key} "
                             "at a data file, a save_to_disk folder or a glob.")
    return paths


def files_of(paths: list[Path]) -> list[Path]:
    """Returns every file the given inputs consist of (a dataset folder's files, recursively)."""
    out: list[Path] = []
    for p in paths:
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out
