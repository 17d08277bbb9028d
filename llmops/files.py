"""Small file helpers: atomic JSON writes, the modes of written files, and JSON read with a bound
on its nesting."""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json_atomic(path: Path, data: Any, allow_nan: bool = True) -> None:
    """Writes JSON to a temp file in the same folder, then renames it over path.

    The file gets the mode `open()` would give it (0666 less the umask, so 0644 by default),
    not mkstemp's private 0600: run folders are often shared. allow_nan=False writes strict JSON
    (a NaN or infinity raises ValueError and nothing is written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": a fresh file, never someone else's
            json.dump(data, f, indent=2, default=_default, allow_nan=allow_nan)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
    """Returns the process's umask (from /proc where it can: no thread sees it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_open(folder: Path) -> int:
    """Gives each file under folder that a library wrote private (mode 0600: safetensors'
    save_file, transformers and peft through it, mkstemp) the mode `open()` would have given it,
    0666 less the umask (0644 by default), as README promises; returns how many it changed.

    Links are not followed, and a file of any other mode (e.g. an executable script) keeps it.
    """
    mode = 0o666 & ~umask()
    if mode & 0o777 == 0o600:
        return 0
    changed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600:
                    os.chmod(path, mode)
                    changed += 1
            except OSError:
                continue
    return changed


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


class JSONLimitError(ValueError):
    """JSON text past a bound (nesting) or outside strict JSON (NaN, Infinity)."""


# A JSON string (escapes included): skipped when counting brackets.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def json_nesting(text: str) -> int:
    """Returns the deepest nesting of arrays and objects in JSON text, without parsing it (so a
    line nested 100,000 deep costs one scan, not a RecursionError)."""
    depth = deepest = 0
    for ch in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON number (strict JSON has no NaN or Infinity)")


def loads_bounded(text: str, max_depth: int) -> Any:
    """Parses strict JSON text nested at most max_depth deep.

    Raises:
        JSONLimitError: Nested deeper than max_depth, or holds NaN/Infinity.
        json.JSONDecodeError: Not JSON.
    """
    depth = json_nesting(text)
    if depth > max_depth:
        raise JSONLimitError(f"nested {depth} deep, over limits.json_depth={max_depth}")
    return json.loads(text, parse_constant=_no_constant)
