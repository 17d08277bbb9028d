"""Small file helpers: the one JSON writer (atomic) and its value converter, JSON lines, the modes
of written files, and JSON read with a bound on its nesting. Every layer writes JSON through here.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def json_default(obj: Any) -> Any:
    """Converts numpy/torch scalars and arrays, paths and sets into JSON-able values.

    Raises:
        TypeError: For any other value (json's own error for it).
    """
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: str | Path, data: Any, allow_nan: bool = True) -> None:
    """Writes data as indented JSON (values converted by `json_default`), atomically: into a temp
    file in the same folder, then renamed over path; the folder is made when missing.

    The file gets the mode `open()` would give it (0666 less the umask, so 0644 by default),
    not mkstemp's private 0600: run folders are often shared. allow_nan=False writes strict JSON
    (a NaN or infinity raises ValueError and nothing is written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": a fresh file, never someone else's
            json.dump(data, f, indent=2, default=json_default, allow_nan=allow_nan)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_jsonl(path: str | Path) -> list[dict]:
    """Reads a JSON-lines file into a list of dicts, skipping blank lines.

    Raises:
        StageError: When a line is not valid JSON (names the file and line number).
    """
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                from llmops.errors import StageError

                raise StageError(
                    f"read_jsonl: invalid JSON at {path}:{lineno} ({e.msg}). "
                    "Fix or remove the line."
                ) from e
    return rows


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes rows as JSON lines (UTF-8, values converted by `json_default`)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")


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
