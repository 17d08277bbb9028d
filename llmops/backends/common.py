"""Helpers shared by stages: where the base model is, JSON I/O, seeding and memory.

Keep this module light: no heavy import at module level (torch, numpy are imported lazily).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmops.files import json_default  # noqa: F401 - re-exported: stages import it from here


def base_model_path(params: Mapping[str, Any], inputs: Mapping[str, Path]) -> str:
    """Returns the model to load: the "base" input folder if present, else model.hub_id.

    Args:
        params: The stage params; `params["model"]["hub_id"]` is used when there is no base input.
        inputs: The stage inputs by upstream kind.

    Raises:
        StageError: When there is neither a "base" input nor a model.hub_id.
    """
    if inputs.get("base") is not None:
        return str(inputs["base"])
    hub_id = (params.get("model") or {}).get("hub_id")
    if not hub_id:
        from llmops.errors import StageError

        raise StageError(
            "base model: no 'base' input and model.hub_id is empty (None). "
            "Set model.hub_id, or use model=tiny so the plan builds the base model."
        )
    return str(hub_id)


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
    """Writes rows as JSON lines (UTF-8, numpy-safe)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Writes obj as indented JSON, converting numpy/torch values (see json_default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=json_default) + "\n", encoding="utf-8")


def set_seed(seed: int) -> None:
    """Seeds Python, numpy (if installed) and torch (if already importable) for reproducibility."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:
        pass


def peak_memory_mb(device: str = "cpu") -> float:
    """Returns the peak memory of this process in MiB.

    On CUDA this is `torch.cuda.max_memory_allocated()`; on CPU the process's peak resident set
    size (ru_maxrss; kilobytes on Linux, bytes on macOS).
    """
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / 2**20 if sys.platform == "darwin" else rss / 1024, 1)
    except ImportError:  # Windows
        try:
            import psutil

            return round(psutil.Process().memory_info().peak_wset / 2**20, 1)
        except Exception:  # noqa: BLE001 - best effort only
            return 0.0


def torch_threads(n: int | None = None) -> int:
    """Sets torch's intra-op threads to n (default: the CPUs available) and returns the count."""
    import torch

    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:
            n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Runs the block on the run's torch CPU threads, then restores the previous count.

    Args:
        threads: StageContext.threads, resolved once by llmops.config.resolve (1 for a small
            model on a CPU); None leaves torch's count as it is.
    """
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
