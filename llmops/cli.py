"""The command line: `python -m llmops [overrides]` (a Hydra app with a pre-flight check).

The pre-flight composes, validates and compiles every point before Hydra launches anything, so any
config problem, Hydra's own included, exits with code 2 and a readable message, and writes nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from llmops.errors import EXIT_CONFIG, EXIT_INTERRUPTED, ConfigError, LlmopsError, Problem

log = logging.getLogger("llmops")

# Hydra flags after which llmops does not pre-flight (they do not run the pipeline, or change
# where configs come from).
_PASSTHROUGH = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
                "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--package", "-p", "--resolve"}


def to_plain(cfg: Any) -> dict[str, Any]:
    """Resolves a composed DictConfig into plain containers, dropping the hydra node."""
    from omegaconf import DictConfig, OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        first = str(exc).splitlines()[0]
        raise ConfigError([Problem(str(key), f"cannot be resolved: {first}")]) from None


def check(overrides: list[str]) -> Any:
    """Composes, validates and compiles one point; returns its Plan or raises ConfigError."""
    from llmops.config.compose import compose

    # Composed with the hydra node, as plan_sweep does: the memoised composition is reused.
    return _compile(compose(overrides, return_hydra_config=True))


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
    from llmops.config.compose import compose
    from llmops.env import detect
    from llmops.sweep import plan_sweep

    overrides = [a for a in argv if not a.startswith("-")]
    sweep = plan_sweep(overrides, any(a in ("-m", "--multirun") for a in argv))
    if sweep is None:
        check(overrides)
        return None
    env = detect()
    hard: list[Problem] = []
    soft: list[Problem] = []
    for point in sweep.points:
        tag = f" [sweep point: {sweep.label(point)}]"
        try:
            cfg = compose(point)
        except ConfigError as exc:  # Hydra could not even launch this point
            hard += [Problem(p.key, p.message + tag) for p in exc.problems]
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


def execute(cfg: Any, run_dir: Path | None = None, overrides: list[str] | None = None,
            meta: dict[str, Any] | None = None) -> Any:
    """Runs the pipeline for one composed config (the pure task function behind the CLI).

    Args:
        cfg: The composed config.
        run_dir: The run folder (default: Hydra's output dir).
        overrides: The overrides to record (default: Hydra's task overrides).
        meta: Extra manifest fields (a sweep job's sweep id, sweep folder and job number).

    Returns:
        The tuned model's exact match (the metric sweepers optimise), or None when nothing ran.
    """
    import json

    from rich.console import Console

    from llmops.compiler.compile import compile_plan
    from llmops.compiler.plan import report_name
    from llmops.compiler.render import plan_table, summary_table
    from llmops.config.validate import validate_and_resolve
    from llmops.env import detect
    from llmops.runner.run import run_plan

    if run_dir is None or overrides is None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir = run_dir or Path(hc.runtime.output_dir)
        overrides = overrides if overrides is not None else list(hc.overrides.task)
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
    report_path = Path(run_dir) / report_name("eval")
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    for renderable in summary_table(manifest, report):
        console.print(renderable)
    console.print(f"run folder: {run_dir}")
    if report:
        return report.get("tuned", {}).get("exact_match")
    return None


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
    info = {**job, "overrides": list(hc.overrides.task)}
    try:
        metric = execute(cfg, run_dir, list(hc.overrides.task), meta=job)
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


def _tuned_metric(run_dir: Path) -> float | None:
    import json

    from llmops.compiler.plan import report_name

    try:
        report = json.loads((run_dir / report_name("eval")).read_text())
        return float(report["tuned"]["exact_match"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _task(cfg: Any) -> Any:
    try:
        return run_job(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages stay in the store; rerun to resume.",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _hydra_app() -> None:
    import hydra

    hydra.main(config_path="pkg://llmops.conf", config_name="config", version_base="1.3")(_task)()


def _run_single(overrides: list[str]) -> None:
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

    from llmops.config.compose import compose, config_loader

    cfg = copy.deepcopy(compose(overrides, return_hydra_config=True))
    with open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")  # as Hydra's app records it
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name="config")
    try:
        ret = run_job(hydra_context=HydraContext(config_loader=config_loader(),
                                                 callbacks=callbacks),
                      task_function=_task, config=cfg, job_dir_key="hydra.run.dir",
                      job_subdir_key=None, configure_logging=True)
        callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
        _ = ret.return_value  # re-raises the task's exception
    finally:
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llmops` and the `llmops` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    sweep = None
    if not any(a.split("=")[0] in _PASSTHROUGH for a in args):
        try:
            sweep = preflight(args)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            sys.exit(EXIT_CONFIG)
    if sweep is None and not any(a.startswith("-") for a in args):
        _run_single(args)
        return
    if sweep is not None and sweep.sweep_dir:
        from llmops.sweep import pin_override

        args.append(pin_override(sweep.sweep_dir))  # jobs and the summary share one folder
    sys.argv = [sys.argv[0], *args]
    _hydra_app()
    if sweep is not None and sweep.sweep_dir:
        from llmops.sweep import print_summary

        code = print_summary(Path(sweep.sweep_dir))
        if code:
            sys.exit(code)
