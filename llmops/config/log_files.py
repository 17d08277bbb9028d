"""Keeps log files inside the run folder.

A `logging` file handler opens its `filename` (`mode: w` truncates it, `mode: a` appends to it,
rotating handlers rename and delete its neighbours), so a handler in `hydra.job_logging` or
`hydra.hydra_logging` could clobber any file it names. Each `filename` is resolved the way Hydra
resolves it when the job starts (`hydra.runtime.output_dir` set to the job's folder, relative
names against the working folder) and must lie inside the run folder: `hydra.run.dir` for a
run, `hydra.sweep.dir` for a multirun, as Hydra's default `${hydra.runtime.output_dir}/...` does.
Hydra's own `hydra/hydra_logging=hydra_debug` writes into the working folder, so it is refused.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from llmops.config.hydra.targets import LOGGING_NODES
from llmops.errors import Problem


def _job_view(cfg: Any, dir_key: str, subdir_key: str | None) -> tuple[Any, str]:
    """Returns a copy of cfg as Hydra's run_job sees it, and the run folder (absolute)."""
    from omegaconf import OmegaConf, open_dict

    job = copy.deepcopy(cfg)
    OmegaConf.set_readonly(job, False)
    with open_dict(job):
        if OmegaConf.is_missing(job.hydra.job, "num"):  # each job's, set by the launcher
            job.hydra.job.num = 0
        root = os.path.abspath(str(OmegaConf.select(job, dir_key)))
        output = os.path.join(root, str(OmegaConf.select(job, subdir_key))) if (
            subdir_key) else root
        job.hydra.runtime.output_dir = os.path.abspath(output)
    return job, root


@contextlib.contextmanager
def _hydra_config(job: Any) -> Iterator[None]:
    """Lets `${hydra:...}` resolve against `job` inside the block."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(job)
    try:
        yield
    finally:
        instance.cfg = saved


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root and path != root


def log_file_problems(cfg: Any, dir_key: str, subdir_key: str | None = None) -> list[Problem]:
    """Lists the logging handlers whose `filename` lies outside the run folder.

    Args:
        cfg: A composition with its hydra node.
        dir_key: The run folder: hydra.run.dir for a single run, hydra.sweep.dir for a
            multirun (its jobs and the sweep itself).
        subdir_key: The key of a job's folder inside it (a multirun's hydra.sweep.subdir).
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    handlers = [(f"hydra.{node}.handlers.{name}.filename", name, node)
                for node in LOGGING_NODES
                for name, handler in (OmegaConf.select(cfg, f"hydra.{node}.handlers",
                                                       default=None) or {}).items()
                if isinstance(handler, DictConfig) and "filename" in handler]
    if not handlers:
        return []
    try:
        job, root = _job_view(cfg, dir_key, subdir_key)
    except OmegaConfBaseException:  # the folder only Hydra's launcher can resolve: see below
        job, root = None, dir_key
    example = {"job_logging": "${hydra.runtime.output_dir}/NAME.log",
               "hydra_logging": "${" + dir_key + "}/NAME.log"}
    problems = []
    for key, name, node in handlers:
        raw = cfg.hydra[node].handlers[name]._get_node("filename")._value()  # as written
        fix = f"e.g. {key}={example[node]}"
        value = None
        if job is not None:
            try:
                with _hydra_config(job):
                    value = OmegaConf.select(job, key)
            except OmegaConfBaseException:
                value = None
        if value is None:
            problems.append(Problem(key, (
                f"'{raw}' cannot be resolved before the run, so llmops cannot tell which file "
                f"it opens. A log file must lie inside the run folder: write {fix}.")))
            continue
        path = os.path.abspath(str(value))
        if not _inside(path, root):
            problems.append(Problem(key, (
                f"'{raw}' is {path}, not a file inside the run folder ({root}): the handler would "
                f"truncate or append to that file. Write it inside the run folder, {fix}.")))
    return problems
