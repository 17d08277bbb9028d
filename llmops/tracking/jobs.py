"""What a job is: its overrides, its sweep, and the command that reruns it.

The one home of these helpers: the metrics sink, the W&B sink, the sweep commands and compare all
import them from here, and this module imports neither sink.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

log = logging.getLogger("llmops")

# Override keys that say where or how a job runs, not what it trains: never "swept parameters".
NOISE_KEYS = ("store_dir", "progress", "dry_run", "sweeps", "hydra", "tracking")


def multirun_job() -> tuple[Path, int] | None:
    """Returns (sweep folder, job number) when Hydra runs this process as a multirun job, else
    None. The one test of "is this a sweep job" (the CLI, metrics.json and W&B all ask it)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return Path(str(hc.sweep.dir)).resolve(), int(hc.job.num)
    except (ImportError, ValueError, AttributeError):
        return None


def override_key(override: str) -> str:
    """Returns the config key of a command-line override ('+lora.r=8' -> 'lora.r')."""
    return override.split("=", 1)[0].lstrip("+~")


def is_noise(key: str) -> bool:
    """Tells whether an override key only says where/how a job runs (store_dir, hydra.*, ...)."""
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOISE_KEYS)


def override_params(overrides: list[str]) -> dict[str, str]:
    """Maps each `key=value` override to its value, in command-line order."""
    return {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}


def reproduce_command(overrides: list[str]) -> str:
    """Returns the command line that reruns exactly this job as a single run.

    A named sweep (`sweeps=X`) stays in the line, for the fixed keys its file sets, with
    `hydra.mode=RUN` so that it runs this one point instead of the whole grid.
    """
    args = [o for o in overrides if not override_key(o).startswith("hydra.mode")]
    if any(override_key(o) == "sweeps" and not o.endswith("=none") for o in args):
        args.append("hydra.mode=RUN")
    return " ".join(["python -m llmops", *(shlex.quote(a) for a in args)])


def sweep_info(run_dir: Path) -> tuple[Path, int | None] | None:
    """Returns (sweep folder, job number) when this job is part of a Hydra multirun, else None.

    Hydra's own answer (`multirun_job`) first; else a job folder of a multirun folder (its parent
    holds multirun.yaml), as when a finished sweep's runs are read again.
    """
    job = multirun_job()
    if job is not None:
        return job
    parent = Path(run_dir).resolve().parent
    if (parent / "multirun.yaml").is_file():
        name = Path(run_dir).name
        return parent, int(name) if name.isdigit() else None
    return None


def sweep_group(sweep_dir: Path) -> str:
    """Names a sweep for grouping: its folder name, with the date folder when that is a time."""
    name = sweep_dir.name
    if len(name) == 8 and name[2] == name[5] == "-":  # Hydra's default HH-MM-SS subfolder
        return f"{sweep_dir.parent.name}_{name}"
    return name


def swept_keys(sweep_dir: Path) -> list[str]:
    """Returns the keys a multirun sweeps over, read from its multirun.yaml (order kept)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        keys = [ov.get_key_element() for ov in OverridesParser.create().parse_overrides(task)
                if ov.is_sweep_override()]
        keys += [str(k) for k in params]
    except Exception as exc:  # an unreadable multirun.yaml must not fail the job
        log.debug("cannot read swept keys from %s: %s", path, exc)
        return []
    keys = [k.lstrip("+~") for k in keys]
    return [k for i, k in enumerate(keys) if k not in keys[:i] and not is_noise(k)]


def varying_keys(params: list[dict[str, Any]]) -> list[str]:
    """Returns the keys whose value differs between jobs (missing counts as a value), in order.

    Args:
        params: Each job's override params ({key: value}, see override_params).
    """
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in keys]
    return [k for k in keys if len({str(p.get(k)) for p in params}) > 1]
