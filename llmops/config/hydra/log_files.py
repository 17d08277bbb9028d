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
import os
from collections.abc import Iterator
from typing import Any

from llmops.config.hydra.targets import LOGGING_NODES
from llmops.errors import Problem


@contextlib.contextmanager
def _as_job(cfg: Any, dir_key: str, subdir_key: str | None) -> Iterator[str]:
    """Makes cfg, inside the block, what Hydra's run_job sees; yields the run folder (absolute).

    Sets hydra.job.num (a launcher's job number; 0 when unset), hydra.runtime.output_dir and the
    HydraConfig that `${hydra:...}` reads, as run_job does before it configures logging, on cfg
    itself (the pre-flight's composition: a copy of it cost more than the whole check), and puts
    every one back as it was on leaving, however the block ends.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    job, runtime = cfg.hydra.job, cfg.hydra.runtime
    saved = job._get_node("num")._value(), runtime._get_node("output_dir")._value()
    instance = HydraConfig.instance()
    saved_hydra = instance.cfg
    try:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            if OmegaConf.is_missing(job, "num"):  # each job's, set by the launcher
                job.num = 0
            root = os.path.abspath(str(OmegaConf.select(cfg, dir_key)))
            output = os.path.join(root, str(OmegaConf.select(cfg, subdir_key))) if (
                subdir_key) else root
            runtime.output_dir = os.path.abspath(output)
        instance.cfg = cfg  # as set_config's copy: HydraConfig.get() is this hydra node
        yield root
    finally:
        instance.cfg = saved_hydra
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            job.num, runtime.output_dir = saved


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
    example = {"job_logging": "${hydra.runtime.output_dir}/NAME.log",
               "hydra_logging": "${" + dir_key + "}/NAME.log"}
    values: dict[str, Any] = {}
    root = dir_key
    try:
        with _as_job(cfg, dir_key, subdir_key) as root:
            for key, _, _ in handlers:
                try:
                    values[key] = OmegaConf.select(cfg, key)
                except OmegaConfBaseException:
                    values[key] = None
    except OmegaConfBaseException:  # the folder only Hydra's launcher can resolve: see below
        values, root = {}, dir_key
    problems = []
    for key, name, node in handlers:
        raw = cfg.hydra[node].handlers[name]._get_node("filename")._value()  # as written
        fix = f"e.g. {key}={example[node]}"
        value = values.get(key)
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
