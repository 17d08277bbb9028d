"""Small file helpers: atomic JSON writes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON to a temp file in the same folder, then renames it over path.

    The file gets the mode `open()` would give it (0666 less the umask, so 0644 by default),
    not mkstemp's private 0600: run folders are often shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": a fresh file, never someone else's
            json.dump(data, f, indent=2, default=_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_default(obj: Any) -> Any:
    """Converts numpy/torch scalars and arrays, paths and sets into JSON-able values."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
