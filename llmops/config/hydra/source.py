"""Where Hydra's app finds its configs: the packaged llmops.conf, or `-cp`/`-cn`/`-cd` (Source).

A leaf of config/hydra: compose, searchpath and command all take a Source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llmops.errors import ConfigError, Problem

CONFIG_MODULE = "llmops.conf"
CONFIG_NAME = "config"
# The module of the Hydra task (llmops.cli._task): Hydra's app derives its search path from it.
APP_MODULE = "llmops.cli"


@dataclass(frozen=True)
class Source:
    """Where Hydra's app finds its configs: `-cp PATH`, `-cn NAME` and `-cd DIR` change it.

    The search path is built the way Hydra's app builds it for the task in llmops.cli, so the
    pre-flight composes exactly what the app would.
    """

    config_path: str = f"pkg://{CONFIG_MODULE}"
    config_name: str = CONFIG_NAME
    config_dir: str | None = None

    def search_path(self) -> Any:
        """Returns Hydra's ConfigSearchPath for this source; raises ConfigError if it is bad."""
        from hydra._internal.utils import create_automatic_config_search_path
        from hydra.core.config_search_path import SearchPathQuery
        from hydra.core.utils import validate_config_path

        try:
            validate_config_path(self.config_path)
        except ValueError:
            raise ConfigError([Problem("--config-path", (
                f"'{self.config_path}' names a file. Give the folder with --config-path and "
                "the file's name (without .yaml) with --config-name."))]) from None
        path = create_automatic_config_search_path(None, APP_MODULE, self.config_path)
        if self.config_dir is not None:
            folder = os.path.abspath(self.config_dir)
            if not os.path.isdir(folder):
                raise ConfigError([Problem("--config-dir", (
                    f"'{self.config_dir}' is not a folder. Give a folder of config groups, "
                    "e.g. --config-dir ./my_conf (with my_conf/model/my_model.yaml)."))])
            path.prepend(provider="command-line", path=f"file://{folder}",
                         anchor=SearchPathQuery(provider="schema"))
        return path


DEFAULT = Source()


def config_loader(source: Source = DEFAULT) -> Any:
    """Returns a Hydra ConfigLoader over the source's search path (as Hydra's app builds it)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return ConfigLoaderImpl(config_search_path=source.search_path())
