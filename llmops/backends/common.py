"""Helpers the backends (and stages that run torch) share: peak memory and torch's CPU threads.

Keep this module light: no heavy import at module level (torch is imported lazily).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


def adapter_kwargs(lora: dict[str, Any]) -> dict[str, Any]:
    """Returns the adapter's size and regularisation as peft and unsloth both name them, from the
    compiled lora params: r, lora_alpha (a float: the update scales by alpha/r, so 0.5 stays 0.5)
    and lora_dropout. Each backend adds its own target modules."""
    return {"r": int(lora["r"]), "lora_alpha": float(lora["alpha"]),
            "lora_dropout": float(lora["dropout"])}
