"""Facts about the machine llmops runs on, found without importing torch."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gpu:
    """One CUDA device as nvidia-smi reports it."""

    name: str
    memory_gb: float


@dataclass(frozen=True)
class Environment:
    """What the compiler may assume about this machine."""

    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    cpu_count: int = 1
    memory_gb: float = 0.0
    installed: frozenset[str] = field(default_factory=frozenset)

    @property
    def cuda(self) -> bool:
        """Tells whether a CUDA GPU is present."""
        return bool(self.gpus)

    def has(self, package: str) -> bool:
        """Tells whether an importable package is installed (never imports it)."""
        return package in self.installed


_PROBED = ("unsloth", "bitsandbytes", "wandb", "lm_eval", "llama_cpp", "deepspeed")


def _nvidia_gpus() -> tuple[Gpu, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append(Gpu(name.strip(), round(float(mem) / 1024, 1)))
        except ValueError:
            continue
    return tuple(gpus)


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 0.0


@functools.lru_cache(maxsize=1)
def detect() -> Environment:
    """Detects GPUs (nvidia-smi), CPU count, memory and optional packages, without torch."""
    installed = frozenset(p for p in _PROBED if importlib.util.find_spec(p) is not None)
    return Environment(
        gpus=_nvidia_gpus(),
        cpu_count=os.cpu_count() or 1,
        memory_gb=round(_memory_gb(), 1),
        installed=installed,
    )
