"""The command line: `python -m llmops [overrides]` (a Hydra app with a pre-flight check).

The pre-flight (preflight.py) composes, validates and compiles every point before Hydra launches
anything, so any config problem, Hydra's own included, exits with code 2 and a readable message,
and writes nothing. job.py runs one point; sweep.py plans and sums up a multirun. A job in the
pre-flight's process takes what the pre-flight checked: each point is validated and resolved once
per process that runs it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from llmops.cli.job import _task, execute, handed_over, run_job
from llmops.cli.preflight import _preflight, check, preflight, show_cfg_check, to_plain
from llmops.errors import EXIT_CONFIG, ConfigError

if TYPE_CHECKING:
    from llmops.cli.preflight import Checked
    from llmops.config.hydra.source import Source

__all__ = ["check", "execute", "main", "preflight", "run_job", "show_cfg_check", "to_plain"]


def _hydra_app() -> None:
    import hydra

    hydra.main(config_path="pkg://llmops.conf", config_name="config", version_base="1.3")(_task)()


def _run_single(overrides: list[str], source: Source | None = None,
                checked: Checked | None = None) -> None:
    """Runs one point the way Hydra's `run` does, on the pre-flight's composition.

    Hydra's app would compose the config twice more (once to find the mode, once to run); a single
    run reuses the composition the pre-flight checked and hands it to Hydra's own run_job (output
    folder, .hydra/ files, logging, HydraConfig), so the job sees exactly what Hydra would give it,
    and hands the job the point the pre-flight validated, resolved and compiled (`checked`).
    OmegaConf reads and writes YAML through libyaml meanwhile (llmops.conf.libyaml).
    """
    import functools

    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict

    from llmops.conf import libyaml
    from llmops.config.hydra.compose import compose_to_keep
    from llmops.config.hydra.source import DEFAULT, config_loader

    source = source or DEFAULT
    cfg = compose_to_keep(overrides, source=source)
    with open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")  # as Hydra's app records it
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=source.config_name)
    try:
        with libyaml():  # .hydra/*.yaml written by libyaml: the same text, faster
            ret = run_job(hydra_context=HydraContext(config_loader=config_loader(source),
                                                     callbacks=callbacks),
                          task_function=functools.partial(_task, checked=checked), config=cfg,
                          job_dir_key="hydra.run.dir",
                          job_subdir_key=None, configure_logging=True)
        callbacks.on_run_end(config=cfg, config_name=source.config_name, job_return=ret)
        _ = ret.return_value  # re-raises the task's exception
    finally:
        GlobalHydra.instance().clear()


#: Allocations between two collections of the youngest generation during the pre-flight (Python:
#: 700). A dry run's pre-flight made about 150 of them and 13 of generation 1, a twentieth of its
#: CPU time: most of what they walked was alive (imports) or about to be freed by its last
#: reference. Its cyclic garbage (OmegaConf nodes point at their parents) is still collected, every
#: 100,000 allocations: a dry run peaks 2 MB higher.
_YOUNG_EVERY = 100_000
#: Young (generation 1) collections between two full ones during the pre-flight (Python: 10).
#: A single run makes no full collection, and a sweep's pre-flight one every few points (its
#: garbage stays bounded).
_FULL_EVERY = 30


def _gc_rare_full() -> tuple[int, int, int]:
    """Makes garbage collections rare during the pre-flight; returns the thresholds to restore.

    Importing Hydra, pydantic and the schema and composing the config create several hundred
    thousand objects that live as long as the process, and each collection walks the young ones
    among them again (a full one: all of them). Every generation is still collected, so a
    composition's cyclic garbage is freed as before, in fewer, larger collections.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], _YOUNG_EVERY), thresholds[1],
                     max(thresholds[2], _FULL_EVERY))
    return thresholds


def _gc_settle(thresholds: tuple[int, int, int], points: int) -> None:
    """Freezes what the pre-flight leaves, then restores the thresholds.

    No later collection walks the frozen objects, nor the one Python makes at exit: with the rare
    full collections, about a fifth of a dry run's CPU time. After several points the garbage that
    outlived the young collections is freed first (one full collection); after one point it is
    too little to pay for one.
    """
    if points > 1:
        gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


#: pydantic's switch for its plugins (entry points of the group `pydantic`).
_PLUGINS_ENV = "PYDANTIC_DISABLE_PLUGINS"
#: pydantic's module that finds its plugins: it imports importlib.metadata to read entry points.
_PLUGIN_LOADER = "pydantic.plugin._loader"


def _no_plugin_loader() -> ModuleType:
    """Returns a stand-in for pydantic's plugin loader while its switch says `__all__`.

    Under that switch pydantic's own `get_plugins` returns no plugin before it reads any entry
    point, but importing its module imports importlib.metadata (with email, zipfile, csv): about
    a twenty-fifth of a dry run, for nothing. The stand-in's `get_plugins` returns none, as
    pydantic's does; any other name loads pydantic's own module, which then replaces it.
    """
    loader = ModuleType(_PLUGIN_LOADER)

    def get_plugins() -> tuple[()]:
        return ()

    def __getattr__(name: str) -> Any:  # a name a later pydantic may import from its loader
        if name.startswith("__"):  # e.g. __path__, which every `from ._loader import` asks for
            raise AttributeError(name)
        if sys.modules.get(_PLUGIN_LOADER) is loader:
            del sys.modules[_PLUGIN_LOADER]
        from pydantic.plugin import _loader  # pydantic's own, in the stand-in's place from now

        return getattr(_loader, name)

    loader.get_plugins = get_plugins  # type: ignore[attr-defined]
    loader.__getattr__ = __getattr__  # type: ignore[method-assign]
    return loader


@contextlib.contextmanager
def _pydantic_plugins_off() -> Iterator[None]:
    """Builds llmops's config models without pydantic's plugins, unless the user set the switch.

    pydantic looks its plugins up in the entry points of every installed distribution when it
    builds its first validator: about a fiftieth of a dry run, for observers of validation that
    llmops's own config schema has no use for. Set only while the pre-flight builds the models,
    so the stages and any library they use start with the environment as it was; meanwhile its
    loader module is a stand-in (_no_plugin_loader), put back to pydantic's own on leaving.
    """
    if _PLUGINS_ENV in os.environ:
        yield
        return
    os.environ[_PLUGINS_ENV] = "__all__"
    loader = _no_plugin_loader() if _PLUGIN_LOADER not in sys.modules else None
    if loader is not None:
        sys.modules[_PLUGIN_LOADER] = loader
    try:
        yield
    finally:
        os.environ.pop(_PLUGINS_ENV, None)
        if loader is not None and sys.modules.get(_PLUGIN_LOADER) is loader:
            del sys.modules[_PLUGIN_LOADER]


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llmops` and the `llmops` console script.

    `--options [GROUP ...]` prints the reference of every option. Every other command but help,
    version, info and shell completion goes through the pre-flight
    first (--cfg, -cp/-cn/-cd and --package included): config errors exit 2 before Hydra writes
    or instantiates anything. A secret's value on the command line (a shell-expanded
    $WANDB_API_KEY) is replaced by `${oc.env:NAME}` before anything records it, and
    `eval.gates.NAME.FIELD=V` becomes `++eval.gates...` (compose.gate_overrides).

    As the process's own command (argv None) it keeps full garbage collections off the
    pre-flight's objects (_gc_rare_full) and builds the config models without pydantic's plugins
    (_pydantic_plugins_off); called from Python, it leaves the collector and pydantic alone.
    """
    thresholds = _gc_rare_full() if argv is None else None
    own = _pydantic_plugins_off() if argv is None else contextlib.nullcontext()
    from llmops.config.hydra.command import parse_command
    from llmops.config.hydra.compose import gate_overrides
    from llmops.config.hydra.secrets import redact

    args = gate_overrides(redact(list(sys.argv[1:] if argv is None else argv)))
    if args[:1] == ["--options"]:  # the reference of every option (cli/options.py)
        from llmops.cli.options import main as options

        sys.exit(options(args[1:]))
    sys.argv = [sys.argv[0], *args]
    try:
        command = parse_command(args)
        if command.passthrough:
            _hydra_app()
            return
        if command.show_cfg:
            show_cfg_check(command)
            sweep, checked = None, []
        else:
            with own:
                sweep, checked = _preflight(command)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if thresholds is not None:
        _gc_settle(thresholds, len(checked))
    if command.show_cfg:
        _hydra_app()
        return
    if sweep is None:
        _run_single(command.overrides, command.source, checked[0])
        return
    if sweep.sweep_dir:
        from llmops.cli.sweep import pin_override

        args.append(pin_override(sweep.sweep_dir))  # jobs and the summary share one folder
    sys.argv = [sys.argv[0], *args]
    from llmops.runner.shared import shared_stage_process

    # To the jobs Hydra's launcher runs in this process, if any: the checked points, and one
    # stage process for all of them (the next job takes over the last one's).
    with handed_over(checked), shared_stage_process():
        _hydra_app()
    if sweep.sweep_dir:
        from llmops.cli.sweep import print_summary

        code = print_summary(Path(sweep.sweep_dir))
        if code:
            sys.exit(code)
