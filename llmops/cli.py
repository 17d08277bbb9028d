"""The command line: `python -m llmops [overrides]` (a Hydra app with a pre-flight check).

The pre-flight composes, validates and compiles every point before Hydra launches anything, so any
config problem, Hydra's own included, exits with code 2 and a readable message, and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigError,
    LlmopsError,
    Problem,
    Terminated,
)

if TYPE_CHECKING:
    from llmops.config.command import Command
    from llmops.config.compose import Source

log = logging.getLogger("llmops")


def to_plain(cfg: Any) -> dict[str, Any]:
    """Resolves a composed DictConfig into plain containers, dropping the hydra node.

    Secrets stay out: `${oc.env:NAME}` of a secret-looking NAME resolves to its own text, and a
    secret's value found anywhere is replaced by that text (llmops.config.secrets).
    """
    from omegaconf import DictConfig, OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from llmops.config.secrets import redact, secrets_unresolved

    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        with secrets_unresolved():
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        first = str(exc).splitlines()[0]
        raise ConfigError([Problem(str(key), f"cannot be resolved: {first}")]) from None
    return redact(plain)  # type: ignore[no-any-return]


def check(overrides: list[str], source: Source | None = None) -> Any:
    """Composes, checks (hydra node included), validates and compiles one point.

    Returns:
        The point's Plan.

    Raises:
        ConfigError: Every problem found.
    """
    from llmops.config.compose import DEFAULT, compose
    from llmops.config.hydra_checks import RUN_DIR, hydra_problems

    # Composed with the hydra node, as plan_sweep does: the memoised composition is reused.
    cfg = compose(overrides, return_hydra_config=True, source=source or DEFAULT)
    hard = hydra_problems(cfg, RUN_DIR)
    try:
        plan = _compile(cfg)
    except ConfigError as exc:
        raise ConfigError(_merge(hard, exc.problems)) from None
    if hard:
        raise ConfigError(hard)
    return plan


def _merge(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Adds the problems of `more` whose key `first` does not already report."""
    keys = {p.key for p in first}
    return first + [p for p in more if p.key not in keys]


def _compile(cfg: Any, env: Any = None) -> Any:
    from llmops.compiler.compile import compile_plan
    from llmops.config.validate import validate_and_resolve
    from llmops.env import detect

    return compile_plan(*validate_and_resolve(to_plain(cfg), env or detect()))


def preflight(argv: list[str]) -> Any:
    """Checks every point the command would run; raises ConfigError listing all problems.

    Returns:
        The Sweep for a multirun (named sweep or -m), else None. With skip_invalid=true, points
        that compose but fail validation are listed on stderr and left to skip themselves.
    """
    from llmops.config.command import parse_command

    command = parse_command(argv)
    if command.show_cfg:
        show_cfg_check(command)
        return None
    return _preflight(command)


def show_cfg_check(command: Command) -> None:
    """Checks what `--cfg` prints: it must compose, and name nothing Hydra would run."""
    from llmops.config.compose import compose
    from llmops.config.hydra_checks import hydra_problems

    cfg = compose(command.overrides, return_hydra_config=True, source=command.source)
    problems = hydra_problems(cfg, dir_key=None)
    if problems:
        raise ConfigError(problems)


def _preflight(command: Command) -> Any:
    from llmops.config.compose import compose
    from llmops.config.hydra_checks import SWEEP_DIR, hydra_problems
    from llmops.env import detect
    from llmops.sweep import plan_sweep

    overrides, source = command.overrides, command.source
    sweep = plan_sweep(overrides, command.multirun, source)
    if sweep is None:
        check(overrides, source)
        return None
    # The multirun's own composition: Hydra instantiates its callbacks, sweeper and launcher.
    own = compose(_fixed(overrides), return_hydra_config=True, source=source)
    hard = hydra_problems(own, SWEEP_DIR)
    if hard:
        raise ConfigError(hard)
    env = detect()
    soft: list[Problem] = []
    for point in sweep.points:
        tag = f" [sweep point: {sweep.label(point)}]"
        try:  # a point's hydra node configures its job's logging: checked like the sweep's
            cfg = compose(point, return_hydra_config=True, source=source)
            problems = hydra_problems(cfg, dir_key=None, logs_in=SWEEP_DIR)
        except ConfigError as exc:  # Hydra could not even launch this point
            problems = exc.problems
        if problems:
            hard += [Problem(p.key, p.message + tag) for p in problems]
            continue
        try:
            _compile(cfg, env)
        except ConfigError as exc:
            soft += [Problem(p.key, p.message + tag) for p in exc.problems]
            sweep.invalid.append(sweep.label(point))
    if hard or (soft and (not sweep.skip_invalid or len(sweep.invalid) == len(sweep.points))):
        raise ConfigError(hard + soft)
    if soft:
        print(f"skip_invalid: {len(sweep.invalid)} of {len(sweep.points)} sweep points are "
              f"invalid and will be skipped:\n" + "\n".join(f"  - {p}" for p in soft),
              file=sys.stderr)
    return sweep


def _fixed(overrides: list[str]) -> list[str]:
    """Returns the overrides that are not sweeps (what Hydra's multirun composes itself with)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return [o for o in overrides if not parser.parse_overrides([o])[0].is_sweep_override()]


def execute(cfg: Any, run_dir: Path | None = None, overrides: list[str] | None = None,
            meta: dict[str, Any] | None = None) -> Any:
    """Runs the pipeline for one composed config (the pure task function behind the CLI).

    Args:
        cfg: The composed config.
        run_dir: The run folder (default: Hydra's output dir).
        overrides: The overrides to record (default: Hydra's task overrides).
        meta: Extra manifest fields (a sweep job's sweep id, sweep folder and job number).

    Returns:
        The tuned model's exact match (the metric sweepers optimise) as a finite float, or None
        when nothing ran or it was not measured.
    """
    from rich.console import Console

    from llmops.compiler.compile import compile_plan
    from llmops.compiler.render import plan_table, print_summary
    from llmops.config.validate import validate_and_resolve
    from llmops.env import detect
    from llmops.runner.run import run_plan
    from llmops.sweep import job_metric

    if run_dir is None or overrides is None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir = run_dir or Path(hc.runtime.output_dir)
        overrides = overrides if overrides is not None else task_overrides(hc)
    app, resolved = validate_and_resolve(to_plain(cfg), detect())
    plan = compile_plan(app, resolved)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(plan_table(plan))
    if app.dry_run:
        plan.write(Path(run_dir) / "plan.json")
        if any(s.kind == "compute" for s in plan.stages):
            from llmops.compiler.render import compute_table
            from llmops.runner.files import write_json_atomic
            from llmops.stages.compute import plan as compute_plan

            estimate = compute_plan(plan.stage("compute").params)
            write_json_atomic(Path(run_dir) / plan.stage("compute").report, estimate)
            console.print(compute_table(estimate))
        console.print(f"dry run: nothing ran. Plan written to {Path(run_dir) / 'plan.json'}")
        return None
    manifest = run_plan(plan, Path(run_dir), overrides, meta)
    report = _eval_report(Path(run_dir))
    print_summary(console, manifest, report, Path(run_dir))  # never fails the finished run
    return job_metric(report)


def task_overrides(hc: Any) -> list[str]:
    """Returns the job's overrides as typed: `${oc.env:NAME}` stays text, as in overrides.yaml."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]


def _fail(exc: LlmopsError) -> None:
    print(f"\n{exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_job(cfg: Any) -> Any:
    """The Hydra task: runs one point; returns the metric sweepers optimise.

    In a multirun a failing point (stage error, gate failure, invalid point) is recorded in its
    run folder (sweep_job.json, manifest.json) and returns None, or the tuned metric for a gate
    failure, so Hydra goes on with the other points; `main` exits non-zero at the end.
    """
    from llmops.sweep import job_context, record_job

    job = job_context()
    if job is None:
        try:
            return execute(cfg)
        except LlmopsError as exc:
            _fail(exc)
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    info = {**job, "overrides": task_overrides(hc)}
    try:
        metric = execute(cfg, run_dir, info["overrides"], meta=job)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one point's failure must not end the sweep
        status = {"GateFailed": "gate_failed", "NoGo": "no_go"}.get(type(exc).__name__, "failed")
        if isinstance(exc, ConfigError) and cfg.get("skip_invalid"):
            status = "invalid"
        if not isinstance(exc, LlmopsError):
            log.exception("job %s crashed", job["job_num"])
        log.error("job %s %s: %s", job["job_num"], status, exc)
        metric = _tuned_metric(run_dir) if status == "gate_failed" else None
        error = ("; ".join(str(p) for p in exc.problems) if isinstance(exc, ConfigError)
                 else str(exc))
        record_job(run_dir, status, metric, error=error, **info)
        return metric
    record_job(run_dir, "dry_run" if cfg.get("dry_run") else "succeeded", metric, **info)
    return metric


def _eval_report(run_dir: Path) -> dict[str, Any] | None:
    """Returns the run's eval_report.json, or None when it is missing or unreadable."""
    import json

    from llmops.compiler.plan import report_name

    try:
        report = json.loads((run_dir / report_name("eval")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _tuned_metric(run_dir: Path) -> float | None:
    from llmops.sweep import job_metric

    return job_metric(_eval_report(run_dir))


def _task(cfg: Any) -> Any:
    try:
        with _sigterm_as_interrupt():
            return run_job(cfg)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{what}: finished stages stay in the store; rerun to resume.", file=sys.stderr)
        sys.exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Makes SIGTERM stop the job like Ctrl-C (raised in the main thread) while the job runs.

    Only where SIGTERM still has its default action: submitit's job environment handles it (and
    SIGUSR2, its requeue signal) itself. A second SIGTERM ends the process at once.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _hydra_app() -> None:
    import hydra

    hydra.main(config_path="pkg://llmops.conf", config_name="config", version_base="1.3")(_task)()


def _run_single(overrides: list[str], source: Source | None = None) -> None:
    """Runs one point the way Hydra's `run` does, on the pre-flight's composition.

    Hydra's app would compose the config twice more (once to find the mode, once to run); a single
    run reuses the composition the pre-flight checked and hands it to Hydra's own run_job (output
    folder, .hydra/ files, logging, HydraConfig), so the job sees exactly what Hydra would give it.
    """
    import copy

    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict

    from llmops.config.compose import DEFAULT, compose, config_loader

    source = source or DEFAULT
    cfg = copy.deepcopy(compose(overrides, return_hydra_config=True, source=source))
    with open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")  # as Hydra's app records it
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=source.config_name)
    try:
        ret = run_job(hydra_context=HydraContext(config_loader=config_loader(source),
                                                 callbacks=callbacks),
                      task_function=_task, config=cfg, job_dir_key="hydra.run.dir",
                      job_subdir_key=None, configure_logging=True)
        callbacks.on_run_end(config=cfg, config_name=source.config_name, job_return=ret)
        _ = ret.return_value  # re-raises the task's exception
    finally:
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llmops` and the `llmops` console script.

    Every command but help, version, info and shell completion goes through the pre-flight
    first (--cfg, -cp/-cn/-cd and --package included): config errors exit 2 before Hydra writes
    or instantiates anything. A secret's value on the command line (a shell-expanded
    $WANDB_API_KEY) is replaced by `${oc.env:NAME}` before anything records it.
    """
    from llmops.config.command import parse_command
    from llmops.config.secrets import redact

    args = redact(list(sys.argv[1:] if argv is None else argv))
    sys.argv = [sys.argv[0], *args]
    try:
        command = parse_command(args)
        if command.passthrough:
            _hydra_app()
            return
        if command.show_cfg:
            show_cfg_check(command)
            sweep = None
        else:
            sweep = _preflight(command)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if command.show_cfg:
        _hydra_app()
        return
    if sweep is None:
        _run_single(command.overrides, command.source)
        return
    if sweep.sweep_dir:
        from llmops.sweep import pin_override

        args.append(pin_override(sweep.sweep_dir))  # jobs and the summary share one folder
    sys.argv = [sys.argv[0], *args]
    _hydra_app()
    if sweep.sweep_dir:
        from llmops.sweep import print_summary

        code = print_summary(Path(sweep.sweep_dir))
        if code:
            sys.exit(code)
