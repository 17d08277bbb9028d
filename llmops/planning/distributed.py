"""Resolves the `distributed` group once: processes, world size, collective backend, FSDP version.

Pure: no torch. Installed versions are read from package metadata (``importlib.metadata``), never
by importing the package.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

# accelerate's FullyShardedDataParallelPlugin takes fsdp_version=2 from 1.6.0 on, and FSDP2 needs
# torch >= 2.6 (accelerate.utils.constants.FSDP2_PYTORCH_VERSION).
FSDP2_ACCELERATE = Version("1.6.0")
FSDP2_TORCH = Version("2.6.0")


def _version(package: str) -> Version | None:
    import importlib.metadata  # only where FSDP is planned: a plan without it never reads it

    try:
        return Version(importlib.metadata.version(package).split("+")[0])
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


@functools.lru_cache(maxsize=1)
def fsdp_version() -> int:
    """Returns 2 when the installed accelerate and torch run FSDP2, else 1."""
    acc, torch = _version("accelerate"), _version("torch")
    return 2 if acc and torch and acc >= FSDP2_ACCELERATE and torch >= FSDP2_TORCH else 1


def procs_per_node(nproc: int | str, hardware: Mapping[str, Any]) -> int:
    """Returns the processes per node: nproc, or for auto the profile's GPUs (1 on a CPU)."""
    if nproc != "auto":
        return int(nproc)
    return max(1, int(hardware["num_gpus"] or 0)) if hardware["device"] == "cuda" else 1


def resolve_distributed(d: Mapping[str, Any], hardware: Mapping[str, Any]) -> dict[str, Any]:
    """Resolves the distributed group for a resolved hardware profile.

    Args:
        d: The validated `distributed` group (its keys), or an option file's.
        hardware: The resolved hardware profile (device, num_gpus).

    Returns:
        The group's keys with nproc_per_node and backend resolved, plus world_size
        (nproc_per_node x nnodes) and fsdp_version (1 or 2 for strategy fsdp, else None).
    """
    out = dict(d)
    nproc = procs_per_node(d["nproc_per_node"], hardware)
    backend = d["backend"]
    if backend == "auto":
        backend = "nccl" if hardware["device"] == "cuda" else "gloo"
    out.update(nproc_per_node=nproc, backend=backend, world_size=nproc * int(d["nnodes"]),
               fsdp_version=fsdp_version() if d["strategy"] == "fsdp" else None)
    return out
