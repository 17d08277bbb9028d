"""Facts about the machine llmops runs on, found without importing torch."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

#: Set by the sweep pre-flight for its jobs: how many of them run at once on this machine.
CONCURRENT_JOBS_ENV = "LLMOPS_CONCURRENT_JOBS"


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
    memory_source: str = "physical RAM"

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
    import subprocess  # only where a driver is installed

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


def _read_limit(path: Path) -> float | None:
    """Returns a cgroup memory limit file's value in GiB; None for 'max', absent or unreadable.

    cgroup v1 writes a huge number (about 2**63) for no limit: anything over 2**60 counts as none.
    """
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max" or not text.isdigit() or int(text) >= 2**60:
        return None
    return int(text) / 1024**3


def cgroup_limit_gb(root: Path = Path("/sys/fs/cgroup"),
                    proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[float, str] | None:
    """Returns (GiB, file) of this process's cgroup memory limit, or None when unlimited.

    cgroup v2: ``memory.max`` of the process's own group (from /proc/self/cgroup's ``0::`` line)
    and of its parents up to the root; cgroup v1: ``memory/memory.limit_in_bytes``. The smallest
    limit found wins.
    """
    def chain(path: str) -> list[str]:
        parts = [p for p in path.strip("/").split("/") if p]
        return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]

    v2, v1 = [""], [""]
    try:
        for line in proc_cgroup.read_text().splitlines():
            hid, _, rest = line.partition(":")
            ctrl, _, path = rest.partition(":")
            if hid == "0" and ctrl == "":
                v2 = chain(path)
            elif "memory" in ctrl.split(","):
                v1 = chain(path)
    except OSError:
        pass
    files = [root / g / "memory.max" for g in v2]
    files += [root / "unified" / g / "memory.max" for g in v2]
    files += [root / "memory" / g / "memory.limit_in_bytes" for g in v1]
    found: list[tuple[float, str]] = []
    for f in dict.fromkeys(files):
        gb = _read_limit(f)
        if gb is not None:
            found.append((gb, str(f)))
    return min(found) if found else None


def slurm_limit_gb(environ: Mapping[str, str] = os.environ) -> tuple[float, str] | None:
    """Returns (GiB, variables) of the SLURM job's memory allocation on this node, or None.

    SLURM_MEM_PER_NODE (MiB); else SLURM_MEM_PER_CPU (MiB) x the CPUs the job holds here
    (SLURM_CPUS_ON_NODE, else SLURM_CPUS_PER_TASK, else 1).
    """
    def num(key: str) -> int | None:
        value = environ.get(key, "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    per_node = num("SLURM_MEM_PER_NODE")
    if per_node:
        return per_node / 1024, "SLURM_MEM_PER_NODE"
    per_cpu = num("SLURM_MEM_PER_CPU")
    if per_cpu:
        key = "SLURM_CPUS_ON_NODE" if num("SLURM_CPUS_ON_NODE") else "SLURM_CPUS_PER_TASK"
        cpus = num(key) or 1
        return per_cpu * cpus / 1024, f"SLURM_MEM_PER_CPU x {key} ({cpus})"
    return None


def memory_capacity(physical_gb: float, root: Path = Path("/sys/fs/cgroup"),
                    proc_cgroup: Path = Path("/proc/self/cgroup"),
                    environ: Mapping[str, str] = os.environ) -> tuple[float, str]:
    """Returns (GiB a run may use, where that came from): the least of physical RAM, the cgroup
    limit and the SLURM allocation."""
    best = (physical_gb, "physical RAM")
    for limit in (cgroup_limit_gb(root, proc_cgroup), slurm_limit_gb(environ)):
        if limit and limit[0] < best[0]:
            best = limit
    return best


def shared_by(env: Environment, jobs: int) -> Environment:
    """Returns env with its memory divided among `jobs` sweep jobs running at once."""
    if jobs <= 1:
        return env
    return replace(env, memory_gb=round(env.memory_gb / jobs, 1),
                   memory_source=f"{env.memory_source} / {jobs} sweep jobs at once")


def concurrent_jobs(launcher: Mapping[str, object] | None, n_points: int, cpu_count: int) -> int:
    """Returns how many sweep jobs share this machine at once under a Hydra launcher config.

    joblib runs n_jobs at once (negative: cpu_count + 1 + n_jobs, as joblib counts), at most one
    per point; the basic launcher runs one; submitit's jobs each hold their own allocation.
    """
    if not launcher or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)  # type: ignore[call-overload]
    if n < 0:
        n = max(1, cpu_count + 1 + n)
    return max(1, min(n, n_points))


@functools.lru_cache(maxsize=1)
def detect() -> Environment:
    """Detects GPUs (nvidia-smi), CPU count, memory and optional packages, without torch.

    Memory is what a run may use (``memory_capacity``: physical RAM, the cgroup limit, the SLURM
    allocation), divided among the sweep jobs running at once ($LLMOPS_CONCURRENT_JOBS, set by
    the sweep pre-flight).
    """
    installed = frozenset(p for p in _PROBED if importlib.util.find_spec(p) is not None)
    memory, source = memory_capacity(_memory_gb())
    env = Environment(
        gpus=_nvidia_gpus(),
        cpu_count=os.cpu_count() or 1,
        memory_gb=round(memory, 1),
        installed=installed,
        memory_source=source,
    )
    jobs = os.environ.get(CONCURRENT_JOBS_ENV, "")
    return shared_by(env, int(jobs)) if jobs.isdigit() else env
