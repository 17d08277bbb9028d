"""Cross-field rules of store_dir: the stage cache must be a folder this process can write."""

from __future__ import annotations

import os
from pathlib import Path

from llmops.config.schema import AppConfig
from llmops.errors import Problem


def store_problems(cfg: AppConfig) -> list[Problem]:
    """Checks, without writing, that store_dir is or can become a folder this process can write.

    A dry run writes nothing to the store, so it is not checked there (it may plan for another
    machine's shared filesystem).
    """
    if cfg.dry_run:
        return []
    store = Path(cfg.store_dir).expanduser().absolute()
    fix = "Point store_dir=DIR (or LLMOPS_STORE) at a folder you can write to."
    existing = next(p for p in (store, *store.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == store else f"cannot be created: {existing} is a file"
        return [Problem("store_dir", f"{store} {what}. Remove that file, or use another folder. "
                                     f"{fix}")]
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == store else f" ({store} would be created in it)"
        return [Problem("store_dir", f"{existing} is not writable{where}: check its permissions, "
                                     f"a read-only mount, or the immutable flag (lsattr). {fix}")]
    return []
