"""Runs a Plan: cache lookup, locks, atomic publish, progress, reports and manifest."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from llmops.core.context import StageContext
from llmops.core.plan import Plan, StageSpec, stage_kind
from llmops.errors import GateFailed, LlmopsError, NoGo, StageError, StoreError
from llmops.runner import dispatch
from llmops.runner.manifest import Manifest
from llmops.runner.memory import fix_for, planned
from llmops.runner.shared import job_stage_process
from llmops.runner.supervise import StageProcess, unused_packages
from llmops.store.cas import Store
from llmops.tracking.metrics import start_tracking

log = logging.getLogger("llmops")


def _link_into_run(spec: StageSpec, entry: Path, run_dir: Path) -> None:
    """Copies the stage's report and plots into the run folder and links its full output."""
    report = entry / spec.report
    if report.is_file():
        shutil.copy2(report, run_dir / spec.report)
    for png in entry.glob("*.png"):
        shutil.copy2(png, run_dir / png.name)
    stages = run_dir / "stages"
    stages.mkdir(exist_ok=True)
    link = stages / spec.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(entry.resolve(), target_is_directory=True)


def _gate_failure(report: dict[str, Any]) -> str:
    """Lists the failed gates of an eval report, one line each; never raises.

    A skipped gate (its metric was not measured) is not a failure and is not listed.
    """
    from llmops.compiler.render import fmt_value, gate_state

    lines = []
    for g in report.get("gates") or []:
        if not isinstance(g, dict) or gate_state(g) != "NO":
            continue
        sign = "≤" if g.get("direction") == "max" else "≥"
        margin = g.get("margin")
        short = f"; short by {fmt_value(abs(margin))}" if isinstance(margin, int | float) else ""
        lines.append(f"  - {g.get('name')}: {g.get('metric')} = {fmt_value(g.get('value'))} "
                     f"(needs {sign} {fmt_value(g.get('threshold'))}{short})")
    return "\n".join(lines) or "  - (no failed gate is recorded in the report)"


def run_plan(plan: Plan, run_dir: Path, overrides: list[str] | None = None,
             meta: dict[str, Any] | None = None, stage_process: bool = True) -> dict[str, Any]:
    """Executes every stage of the plan in order, reusing finished stages from the store.

    Whatever stops the run once its manifest exists (a stage error, an unwritable store, Ctrl-C,
    SIGTERM, submitit's requeue) is recorded there: the manifest never stays `running`.

    Args:
        plan: The compiled plan.
        run_dir: The run folder; receives plan.json, manifest.json, reports and stage links.
        overrides: The command-line overrides, recorded in the manifest.
        meta: Extra top-level manifest fields (a sweep job's `sweep`, `sweep_dir`, `job_num`).
        stage_process: Run the stages in a stage process this one outlives (see _execute).
            False runs them here: task 0 of a multi-task submitit job, whose training stages
            share this process's rendezvous store with the other tasks.

    Returns:
        The final manifest data.

    Raises:
        LlmopsError: A stage failed, the store is not writable (StoreError) or a gate blocked the
            plan; the manifest says which.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.write(run_dir / "plan.json")
    store = Store(Path(plan.run["store_dir"]))
    manifest = Manifest(plan, run_dir, overrides, meta)
    try:
        process, shared = (None, False)
        if stage_process:
            process, shared = job_stage_process(
                unused_packages(spec.params for spec in plan.stages))
        _run_stages(plan, run_dir, store, manifest, process, shared)
    except BaseException as exc:
        error = _stop(manifest, store, exc)
        if error is exc:
            raise
        raise error from exc
    return manifest.data


def _stop(manifest: Manifest, store: Store, exc: BaseException,
          stage: str | None = None) -> BaseException:
    """Records why the run stopped (unless already recorded); returns the error to raise.

    Ctrl-C, SIGTERM and SystemExit from a signal handler (submitit's requeue on a time limit or
    preemption) mean the process was asked to stop: `interrupted`, and the rerun resumes. An
    OSError on a path inside the store becomes a StoreError naming the path and the fix.
    """
    stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
    error: BaseException = exc
    if isinstance(exc, OSError):
        error = StoreError.from_os_error(store.root, exc) or exc
    if not stopped and not isinstance(error, LlmopsError):
        error = StageError(f"{stage + ': ' if stage else ''}{type(exc).__name__}: {exc}")
    if manifest.data["status"] == "running":
        status = "interrupted" if stopped else "failed"
        message = str(error) or type(error).__name__
        if stage:
            manifest.stage(stage, status=status, error=message, **getattr(error, "fields", {}))
        manifest.finish(status, **({"failed_stage": stage} if stage else {"error": message}))
    return error


def _run_stages(plan: Plan, run_dir: Path, store: Store, manifest: Manifest,
                stage_process: StageProcess | None, shared: bool = False) -> None:
    """Runs the stages in order, recording each; run_plan records why they stopped, if they did.
    The stage process ends with the job unless it is shared (`shared_stage_process`)."""
    store.register_run(run_dir)
    tracking = start_tracking(plan, run_dir, manifest)  # metrics.json (+ W&B); finishes with it
    try:
        _run_each(plan, run_dir, store, manifest, tracking, stage_process)
    finally:
        if stage_process is not None and not shared:
            stage_process.close()


def _run_each(plan: Plan, run_dir: Path, store: Store, manifest: Manifest, tracking: Any,
              stage_process: StageProcess | None) -> None:
    """The stage loop of _run_stages: each stage cached or run (in the stage process)."""
    outputs: dict[str, Path] = {}
    total = len(plan.stages)
    blocked: str | None = None
    t_run = time.perf_counter()
    for i, spec in enumerate(plan.stages, 1):
        if blocked:
            manifest.stage(spec.name, status="skipped", reason=blocked)
            log.info("[%d/%d] %s: skipped (%s)", i, total, spec.name, blocked)
            continue
        manifest.stage(spec.name, status="running")  # what a killed runner leaves behind
        try:
            entry, status, seconds, extra = _execute(spec, plan, store, outputs, run_dir, i, total,
                                                     stage_process)
        except BaseException as exc:
            error = _stop(manifest, store, exc, spec.name)
            if error is exc:
                raise
            raise error from exc
        outputs[spec.name] = entry
        _link_into_run(spec, entry, run_dir)
        report = _read_report(entry / spec.report)
        manifest.stage(spec.name, status=status, duration_s=round(seconds, 2), path=str(entry),
                       report=spec.report, **extra)
        tracking.log_stage(spec, report)
        if spec.kind == "data":
            manifest.data["data_hashes"] = {
                **spec.input_files,
                **{f.name: _sha(f) for f in sorted(entry.glob("*.jsonl"))},
            }
            manifest.write()
        if spec.kind == "decide" and report.get("go") is False and spec.params["usecase"].get(
                "enforce", True):
            from llmops.planning.decide import no_go_message

            blocked = "the decide stage said no-go"
            manifest.finish("no_go", duration_s=round(time.perf_counter() - t_run, 2))
            for rest in plan.stages[i:]:
                manifest.stage(rest.name, status="skipped", reason=blocked)
            raise NoGo(no_go_message(report, str(run_dir / spec.report)))
        if spec.kind == "eval" and report.get("passed") is False and spec.params.get("enforce"):
            blocked = f"eval gates failed in {spec.name}"
            detail = _gate_failure(report)
            manifest.finish("gate_failed", duration_s=round(time.perf_counter() - t_run, 2))
            for rest in plan.stages[i:]:
                manifest.stage(rest.name, status="skipped", reason=blocked)
            raise GateFailed(
                f"Evaluation gates failed, so export and deploy did not run:\n{detail}\n"
                f"Report: {run_dir / spec.report}. Improve the model, or lower the threshold "
                "(eval.gates.<name>.threshold=...), or record without blocking: eval.enforce=false."
            )
    manifest.finish("succeeded", duration_s=round(time.perf_counter() - t_run, 2))


def _sha(path: Path) -> str:
    from llmops.core.fingerprint import file_sha256

    return file_sha256(path)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _execute(spec: StageSpec, plan: Plan, store: Store, outputs: dict[str, Path],
             run_dir: Path, i: int, total: int, stage_process: StageProcess | None = None,
             ) -> tuple[Path, str, float, dict[str, Any]]:
    """Returns (entry, status, seconds, extra manifest fields) for one stage.

    A stage that runs does so in the job's stage process (llmops.runner.supervise), which this
    process outlives: if it dies, the error says which stage, the signal, the peak memory and
    what the compute plan planned. The manifest records each run stage's `peak_rss_gb`.

    The stage comes from the store (cached) when its entry passes the check (`store.verify`), or
    runs in a private .tmp folder, or, for a resumable stage (the stage table's `resumable`), in
    its stable .work folder: when that folder holds a complete checkpoint from an interrupted
    attempt, training resumes from it (status resumed). A damaged entry is moved aside and
    rebuilt; the manifest's `rebuilt` says why.
    """
    t0 = time.perf_counter()
    # Read from the stage table: the stage's module is imported only where it runs (the stage
    # process; here without one), not to learn these (the data stage's imports ~0.15 CPU-s).
    kind = stage_kind(spec.kind)
    # A stage with side effects outside its folder (deploy: a server, an Ollama model) always runs.
    always, resumable = kind.always_run, kind.resumable
    store.record_use(run_dir, spec)  # first, so that gc keeps what this run is about to use
    seen = None if always else store.lookup(spec)
    with store.lock(spec):  # checks, moves aside and builds happen under the lock
        entry, extra = (None, {}) if always else _reuse(spec, store, plan.run["store_verify"])
        if entry is not None:
            log.info("[%d/%d] %s: cached (%s)%s", i, total, spec.name, spec.fingerprint[:12],
                     "" if seen else ", finished by another job")
            return entry, "cached", time.perf_counter() - t0, {}
        params, status = dict(spec.params), "ran"
        if resumable:
            work = store.work_dir(spec)
            found = store.resume_point(work)
            if found:
                # Resuming is a run-time fact, not part of the fingerprint.
                params = copy.deepcopy(spec.params)
                params.setdefault("train", {})["resume_dir"] = str(found[0])
                status, extra = "resumed", {**extra, "resumed_from_step": found[1]}
                log.info("[%d/%d] %s: resuming from step %d (%s)", i, total, spec.name,
                         found[1], found[0])
            else:
                # A crash before the first checkpoint; what the table's work_keeps names
                # stays (sft's openai_job.json: the paid job a rerun follows, never restarts).
                keeps = set(kind.work_keeps)
                for leftover in work.iterdir():
                    if leftover.name in keeps:
                        continue
                    if leftover.is_dir():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
        else:
            work = store.new_tmp(spec)
        if status == "ran":
            log.info("[%d/%d] %s: running: %s", i, total, spec.name, spec.summary)
        ctx = StageContext(
            run_dir=run_dir, device=plan.run["device"], seed=plan.run["seed"],
            logger=logging.getLogger(f"llmops.stage.{spec.kind}"),
            show_progress=bool(plan.run.get("progress", True)),
            threads=plan.run["threads"],
        )
        inputs = {name: outputs[name] for name in spec.needs}
        try:
            if stage_process is None:
                dispatch.stage(spec.kind).run(params, inputs, work, ctx)
            else:
                extra.update(stage_process.run(
                    spec.name, spec.kind, params, inputs, work, ctx,
                    _planned(plan, spec.kind, outputs), fix_for(spec.kind, params, ctx.device),
                ))
            seconds = time.perf_counter() - t0
            if status == "resumed":
                report = _read_report(work / spec.report)
                extra["resumed_from_step"] = int(report.get("resumed_from_step")
                                                 or extra["resumed_from_step"])
            entry = store.publish(spec, work, {"duration_s": round(seconds, 2), **extra})
        except BaseException as exc:
            if not resumable:  # a resumable stage keeps its checkpoints for the next attempt
                store.discard(work)
            elif status == "resumed" and not isinstance(exc, KeyboardInterrupt | SystemExit):
                log.warning("%s failed while resuming from %s. If the checkpoint is the problem, "
                            "remove %s (or run python -m llmops.store gc) to start over.",
                            spec.name, params["train"]["resume_dir"], work)
            raise
    log.info("[%d/%d] %s: %s in %.1fs", i, total, spec.name,
             "resumed and done" if status == "resumed" else "done", seconds)
    return entry, status, seconds, extra


def _planned(plan: Plan, kind: str, outputs: dict[str, Path]) -> dict[str, Any]:
    """Returns what the run's compute plan planned for a stage of `kind` ({} without one)."""
    compute = next((s for s in plan.stages if s.kind == "compute"), None)
    if compute is None or compute.name not in outputs:
        return {}
    return planned(outputs[compute.name] / compute.report, kind, plan.run["device"])


def _reuse(spec: StageSpec, store: Store, verify: str) -> tuple[Path | None, dict[str, Any]]:
    """Returns (the stage's entry if it can be reused, extra manifest fields); lock held.

    An entry that fails its check is moved aside (to .corrupt/, named in a warning) and the extra
    fields say it is rebuilt and why. An entry published without hashes is used with a warning.
    """
    entry = store.lookup(spec)
    if entry is None:
        return None, {}
    check = store.check(entry, full=verify == "full")
    if check.state == "ok":
        return entry, {}
    if check.state == "unverified":
        log.warning("store entry %s has no content hashes (published by an older llmops), so it "
                    "is used unchecked. Delete it to have the next run rebuild it with hashes.",
                    entry)
        return entry, {}
    reason = "; ".join(check.problems)
    aside = store.move_aside(entry, reason)
    log.warning("store entry %s is damaged (%s): moved aside to %s; running %s again.",
                entry, reason, aside, spec.name)
    return None, {"rebuilt": f"the store entry was damaged: {reason}", "moved_aside": str(aside)}
