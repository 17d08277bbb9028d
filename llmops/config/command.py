"""Reads a `python -m llmops` command line the way Hydra's app will read it.

Hydra's own argument parser gives the flags; from them come the config source (`-cp`, `-cn`,
`-cd`), the overrides, and what the command does. Only the commands that neither run nor print
a composed config (help, version, info, shell completion) go to Hydra without the pre-flight;
their search path is still checked, since Hydra composes (and so imports pkg:// entries) for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmops.config.hydra.source import DEFAULT, Source
from llmops.config.hydra.searchpath import search_path_problems
from llmops.errors import ConfigError, Problem


@dataclass(frozen=True)
class Command:
    """One command line.

    Attributes:
        overrides: The overrides, as typed.
        source: Where the configs come from.
        multirun: -m/--multirun was given.
        show_cfg: --cfg's value (job, hydra, all): print the composed config, run nothing.
        passthrough: Help, version, info or shell completion: Hydra answers it on its own.
    """

    overrides: list[str] = field(default_factory=list)
    source: Source = DEFAULT
    multirun: bool = False
    show_cfg: str | None = None
    passthrough: bool = False


def parse_command(argv: list[str]) -> Command:
    """Parses argv with Hydra's own parser (which exits 2 on an unknown flag).

    Raises:
        ConfigError: --experimental-rerun, which runs a pickled config; a search path entry
            that Hydra would import (checked for help and info too, which compose).
    """
    from hydra._internal.utils import get_args_parser

    ns = get_args_parser().parse_args(list(argv))
    source = Source(config_path=ns.config_path or DEFAULT.config_path,
                    config_name=ns.config_name or DEFAULT.config_name,
                    config_dir=ns.config_dir)
    if ns.help or ns.hydra_help or ns.info is not None or ns.shell_completion:
        unsafe = search_path_problems(ns.overrides, source)  # Hydra composes for these too
        if unsafe:
            raise ConfigError(unsafe)
        return Command(list(ns.overrides), source, passthrough=True)
    if ns.experimental_rerun is not None:
        raise ConfigError([Problem("--experimental-rerun", (
            f"'{ns.experimental_rerun}': rerunning a pickled config can run any code, so llmops "
            "does not support it. Rerun the overrides in RUN_DIR/.hydra/overrides.yaml, e.g. "
            "the `command` in RUN_DIR/metrics.json."))])
    return Command(list(ns.overrides), source, bool(ns.multirun), ns.cfg)
