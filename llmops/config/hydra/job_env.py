"""Refuses `hydra.job.env_set` names that change what code the job runs.

Hydra sets `hydra.job.env_set` in the job's environment, which its torchrun/accelerate
subprocesses inherit: `LD_PRELOAD` loads a library into every process, `PYTHONPATH` or
`PYTHONSTARTUP` picks the Python code that runs, `PATH` the programs. A config may not set
these; a user who means it sets them in the shell that starts llmops.
"""

from __future__ import annotations

from typing import Any

from llmops.errors import Problem

ENV_SET = "hydra.job.env_set"
# Variables that choose the programs, libraries or Python code a process runs.
CODE_VARIABLES = frozenset({
    "PATH", "BASH_ENV", "ENV", "GCONV_PATH",
    "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR", "PYTHONPYCACHEPREFIX", "PYTHONEXECUTABLE", "PYTHONBREAKPOINT",
    "PYTHONWARNINGS",  # a warning filter names its category class, which Python imports
})
# The dynamic loaders' variables (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, DYLD_INSERT_LIBRARIES).
CODE_PREFIXES = ("LD_", "DYLD_")


def changes_code(name: str) -> bool:
    """Tells whether setting the environment variable `name` changes what code runs."""
    upper = name.upper()
    return upper in CODE_VARIABLES or upper.startswith(CODE_PREFIXES)


def env_set_problems(cfg: Any) -> list[Problem]:
    """Lists the hydra.job.env_set entries that would change what code the job runs."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.select(cfg, ENV_SET, default=None)
    if not isinstance(node, DictConfig):
        return []
    problems = []
    for name, value in OmegaConf.to_container(node, resolve=False).items():  # unresolved text
        if changes_code(str(name)):
            problems.append(Problem(f"{ENV_SET}.{name}", (
                f"'{value}': {name} changes what code runs in the job and its torchrun "
                "subprocesses, so a config may not set it. Remove it; if you really mean it, "
                f"set it in your shell: {name}=... python -m llmops ...")))
    return problems
