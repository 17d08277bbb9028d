"""Checks the `hydra` node of a composed config, which llmops's schema does not see.

Everything here runs in the pre-flight, before Hydra creates a folder, configures logging or
instantiates anything: code it would run (targets.py), a run folder it cannot create, a change
of working folder that breaks relative paths, secrets it would copy into .hydra/hydra.yaml,
environment variables that change what code runs (job_env.py) and log files outside the run
folder (log_files.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmops.config.hydra.job_env import env_set_problems
from llmops.config.hydra.log_files import log_file_problems
from llmops.config.hydra.secrets import is_secret_name
from llmops.config.hydra.targets import logging_problems, target_problems
from llmops.errors import Problem

RUN_DIR = "hydra.run.dir"
SWEEP_DIR = "hydra.sweep.dir"
SUBDIR = "hydra.sweep.subdir"


def hydra_problems(cfg: Any, dir_key: str | None = RUN_DIR,
                   logs_in: str | None = None) -> list[Problem]:
    """Lists every problem of the hydra node (and every `_target_` of the whole config).

    Args:
        cfg: A composition with its hydra node (compose(..., return_hydra_config=True)).
        dir_key: The output folder key Hydra will create (hydra.run.dir for a single run,
            hydra.sweep.dir for a multirun), or None to leave folders unchecked.
        logs_in: The run folder key log files must lie in; default: dir_key (None: unchecked,
            for --cfg, which configures no logging).
    """
    from omegaconf import OmegaConf

    problems = target_problems(cfg) + logging_problems(cfg)
    if OmegaConf.select(cfg, "hydra") is None:
        return problems
    problems += env_set_problems(cfg)
    logs_in = logs_in or dir_key
    if logs_in:  # a multirun job's folder is hydra.sweep.dir/hydra.sweep.subdir
        problems += log_file_problems(cfg, logs_in, SUBDIR if logs_in == SWEEP_DIR else None)
    if OmegaConf.select(cfg, "hydra.job.chdir", default=None):
        problems.append(Problem("hydra.job.chdir", (
            "must be false (got true): llmops reads data.path, store_dir and other relative "
            "paths from the folder you start it in, and writes into the run folder itself. "
            "Remove hydra.job.chdir=true (the run folder is printed and in manifest.json).")))
    for name in OmegaConf.select(cfg, "hydra.job.env_copy", default=None) or []:
        if is_secret_name(str(name)):
            problems.append(Problem("hydra.job.env_copy", (
                f"'{name}' looks like a secret, and Hydra writes the values it copies into "
                f".hydra/hydra.yaml. Remove it: the job inherits the environment anyway.")))
    if dir_key:
        problems += dir_problems(cfg, dir_key)
    return problems


def dir_problems(cfg: Any, key: str) -> list[Problem]:
    """Checks that Hydra can create the output folder `key` (hydra.run.dir or hydra.sweep.dir)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(cfg, key)
    except OmegaConfBaseException:  # e.g. ${hydra:...}: only Hydra's run can resolve it
        return []
    example = f"{key}=outputs/{'runs' if key == RUN_DIR else 'multirun'}/my_run"
    if value is None or not str(value).strip():
        return [Problem(key, f"is empty (got {value!r}), so Hydra would write into the current "
                             f"folder. Give a folder, e.g. {example}.")]
    problem = unwritable_reason(Path(os.path.abspath(str(value))))
    return [Problem(key, f"'{value}' {problem}. Point it at a folder, e.g. {example}.")] if (
        problem) else []


def unwritable_reason(folder: Path) -> str | None:
    """Says why a folder cannot be created (an existing file at it or above it), else None."""
    if folder.exists():
        return None if folder.is_dir() else "is an existing file, not a folder"
    for parent in folder.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot be created: '{parent}' is a file"
    return None
