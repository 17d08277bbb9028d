"""One job: the pure task function (`execute`) and the Hydra task around it (`run_job`).

A sweep job's failure is recorded in its run folder and the sweep goes on; Ctrl-C and SIGTERM stop
the job with finished stages kept in the store. A job takes what the pre-flight checked in the
same process (a single run: its plan; a sweep Hydra runs in this process: each point's validated,
resolved config, matched by content, see `handed_over`) and validates and resolves only what no
pre-flight of its process did (a job a launcher started in another process or on another node).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops.cli.preflight import Checked, resolve_point
from llmops.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigError,
    LlmopsError,
    Terminated,
)

log = logging.getLogger("llmops")

#: The points the pre-flight checked, by Checked.key, while Hydra runs them in this process.
_HANDED: dict[tuple[str, Any], Checked] = {}


@contextlib.contextmanager
def handed_over(points: list[Checked]) -> Iterator[None]:
    """Hands the pre-flight's checked points to the jobs Hydra runs in this process meanwhile.

    A job whose config and environment match a point's takes its validated, resolved config
    instead of validating it again (it still compiles: data files are hashed when the job runs).
    Jobs in other processes (joblib, submitit) never see them: they resolve for themselves.
    """
    _HANDED.update((point.key, point) for point in points)
    try:
        yield
    finally:
        _HANDED.clear()


def execute(cfg: Any, run_dir: Path | None = None, overrides: list[str] | None = None,
            meta: dict[str, Any] | None = None, stage_process: bool = True,
            checked: Checked | None = None) -> Any:
    """Runs the pipeline for one composed config (the pure task function behind the CLI).

    Args:
        cfg: The composed config.
        run_dir: The run folder (default: Hydra's output dir).
        overrides: The overrides to record (default: Hydra's task overrides).
        meta: Extra manifest fields (a sweep job's sweep id, sweep folder and job number).
        stage_process: Run the stages in a stage process (llmops.runner.run.run_plan).
        checked: This config as the pre-flight of this process checked it (a single run): its
            plan is run as is. None: validated, resolved and compiled here (once).

    Returns:
        The tuned model's exact match (the metric sweepers optimise) as a finite float, or None
        when nothing ran or it was not measured.
    """
    from llmops.compiler.render import plain_console, plan_table

    if run_dir is None or overrides is None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir = run_dir or Path(hc.runtime.output_dir)
        overrides = overrides if overrides is not None else task_overrides(hc)
    checked = checked or resolve_point(cfg, handed=_HANDED)
    app, plan = checked.app, checked.plan
    console = plain_console(120)
    console.print(plan_table(plan))
    if app.dry_run:
        plan.write(Path(run_dir) / "plan.json")
        if any(s.kind == "compute" for s in plan.stages):
            from llmops.compiler.render import compute_table
            from llmops.files import write_json
            from llmops.stages.compute import plan as compute_plan

            estimate = compute_plan(plan.stage("compute").params)
            write_json(Path(run_dir) / plan.stage("compute").report, estimate)
            console.print(compute_table(estimate))
        console.print(f"dry run: nothing ran. Plan written to {Path(run_dir) / 'plan.json'}")
        return None
    from llmops.cli.sweep import job_metric
    from llmops.compiler.render import print_summary
    from llmops.runner.run import run_plan

    if not stage_process:  # task 0 of a multi-task submitit job: one rank of its training
        from llmops.runner.child import keep_out
        from llmops.runner.rank import unused_in_runner

        keep_out(list(unused_in_runner(plan)))
    try:
        manifest = run_plan(plan, Path(run_dir), overrides, meta, stage_process)
    finally:  # however the run ends: a failed or interrupted run's report shows why first
        _write_report(Path(run_dir))
    report = _eval_report(Path(run_dir))
    print_summary(console, manifest, report, Path(run_dir))  # never fails the finished run
    return job_metric(report)


def _write_report(run_dir: Path) -> None:
    """Writes the run's report.html (llmops.report); a report that cannot be written is a
    warning naming why, never the run's failure."""
    if not (run_dir / "manifest.json").is_file():
        return
    try:
        from llmops.report import write_run_report

        log.info("report: %s", write_run_report(run_dir))
    except Exception as exc:  # the run's outcome stands whatever the report does
        log.warning("could not write %s (%s: %s); rebuild it with python -m llmops.report %s",
                    run_dir / "report.html", type(exc).__name__, exc, run_dir)


def task_overrides(hc: Any) -> list[str]:
    """Returns the job's overrides as typed: `${oc.env:NAME}` stays text, as in overrides.yaml."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]


def _fail(exc: LlmopsError) -> None:
    print(f"\n{exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_job(cfg: Any, checked: Checked | None = None) -> Any:
    """The Hydra task: runs one point; returns the metric sweepers optimise.

    In a multirun a failing point (stage error, gate failure, invalid point) is recorded in its
    run folder (sweep_job.json, manifest.json) and returns None, or the tuned metric for a gate
    failure, so Hydra goes on with the other points; `main` exits non-zero at the end.

    Args:
        cfg: The job's config, as Hydra hands it to the task.
        checked: A single run's point as the pre-flight of this process checked it.
    """
    from llmops.cli.sweep import job_context, record_job

    job = job_context()
    if job is None:
        try:
            return execute(cfg, checked=checked)
        except LlmopsError as exc:
            _fail(exc)
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    info = {**job, "overrides": task_overrides(hc)}
    rank = _submitit_rank()
    if rank:  # one task of a multi-task submitit job, not task 0: it trains, task 0 reports
        from llmops.runner.rank import follow

        follow()
        return None
    try:
        metric = _execute_as_task_0(cfg, run_dir, info["overrides"], job, rank == 0)
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


def _submitit_rank() -> int | None:
    """Returns this task's rank in a multi-task submitit job (each task one rank), else None."""
    import importlib.util

    if importlib.util.find_spec("submitit") is None:
        return None
    from llmops.backends.submitit_ranks import job_rank

    return job_rank()


def _execute_as_task_0(cfg: Any, run_dir: Path, overrides: list[str], job: dict[str, Any],
                       lead: bool) -> Any:
    """Runs execute; as task 0 of a multi-task job, then tells the other tasks it is done.

    Task 0 runs its stages in its own process: its training stages hand their specs to the other
    tasks through a rendezvous store that lives in this process (llmops.backends.submitit_ranks).
    """
    if not lead:
        return execute(cfg, run_dir, overrides, meta=job)
    from llmops.backends.submitit_ranks import finish

    try:
        return execute(cfg, run_dir, overrides, meta=job, stage_process=False)
    finally:
        finish()


def _eval_report(run_dir: Path) -> dict[str, Any] | None:
    """Returns the run's eval_report.json, or None when it is missing or unreadable."""
    import json

    from llmops.core.plan import report_name

    try:
        report = json.loads((run_dir / report_name("eval")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _tuned_metric(run_dir: Path) -> float | None:
    from llmops.cli.sweep import job_metric

    return job_metric(_eval_report(run_dir))


def _task(cfg: Any, checked: Checked | None = None) -> Any:
    try:
        with _sigterm_as_interrupt():
            return run_job(cfg, checked)
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
