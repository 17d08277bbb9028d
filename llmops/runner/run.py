"""Runs a Plan: cache lookup, locks, atomic publish, progress, reports and manifest."""

from __future__ import annotations

import copy
import importlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from llmops.compiler.plan import Plan, StageSpec
from llmops.errors import GateFailed, LlmopsError, NoGo, StageError
from llmops.runner.manifest import Manifest
from llmops.runner.store import Store, latest_checkpoint
from llmops.stages.context import StageContext
from llmops.tracking import start_tracking

log = logging.getLogger("llmops")


def _stage_module(kind: str) -> Any:
    return importlib.import_module(f"llmops.stages.{kind}")


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


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _gate_failure(report: dict[str, Any]) -> str:
    lines = []
    for g in report.get("gates", []):
        if not g.get("passed", True):
            value, threshold = _fmt(g.get("value")), _fmt(g.get("threshold"))
            lines.append(f"  - {g.get('name')}: {g.get('metric')} = {value} "
                         f"(needs {'≥' if g.get('direction', 'min') == 'min' else '≤'} "
                         f"{threshold}; short by {abs(g.get('margin', 0) or 0):.3f})")
    return "\n".join(lines)


def run_plan(plan: Plan, run_dir: Path, overrides: list[str] | None = None,
             meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Executes every stage of the plan in order, reusing finished stages from the store.

    Args:
        plan: The compiled plan.
        run_dir: The run folder; receives plan.json, manifest.json, reports and stage links.
        overrides: The command-line overrides, recorded in the manifest.
        meta: Extra top-level manifest fields (a sweep job's `sweep`, `sweep_dir`, `job_num`).

    Returns:
        The final manifest data.

    Raises:
        LlmopsError: A stage failed or a gate blocked the plan; the manifest says which.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.write(run_dir / "plan.json")
    store = Store(Path(plan.run["store_dir"]))
    manifest = Manifest(plan, run_dir, overrides, meta)
    store.register_run(run_dir)
    tracking = start_tracking(plan, run_dir, manifest)  # metrics.json (+ W&B); finishes with it
    outputs: dict[str, Path] = {}
    total = len(plan.stages)
    blocked: str | None = None
    t_run = time.perf_counter()
    for i, spec in enumerate(plan.stages, 1):
        if blocked:
            manifest.stage(spec.name, status="skipped", reason=blocked)
            log.info("[%d/%d] %s: skipped (%s)", i, total, spec.name, blocked)
            continue
        try:
            entry, status, seconds, extra = _execute(spec, plan, store, outputs, run_dir, i, total)
        except BaseException as exc:
            # Ctrl-C, or SystemExit from a signal handler (submitit's requeue on a time limit or
            # preemption): the process is asked to stop, and the rerun resumes.
            stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
            status = "interrupted" if stopped else "failed"
            manifest.stage(spec.name, status=status, error=str(exc) or type(exc).__name__)
            manifest.finish(status, failed_stage=spec.name)
            if stopped or isinstance(exc, LlmopsError):
                raise
            raise StageError(f"{spec.name}: {type(exc).__name__}: {exc}") from exc
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
    return manifest.data


def _sha(path: Path) -> str:
    from llmops.compiler.fingerprint import file_sha256

    return file_sha256(path)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _execute(spec: StageSpec, plan: Plan, store: Store, outputs: dict[str, Path],
             run_dir: Path, i: int, total: int) -> tuple[Path, str, float, dict[str, Any]]:
    """Returns (entry, status, seconds, extra manifest fields) for one stage.

    The stage comes from the store (cached), or runs in a private .tmp folder, or, for a resumable
    stage (module attribute RESUMABLE), in its stable .work folder: when that folder holds a
    checkpoint from an interrupted attempt, training resumes from it (status resumed).
    """
    t0 = time.perf_counter()
    module = _stage_module(spec.kind)
    # A stage with side effects outside its folder (deploy: a server, an Ollama model) always runs.
    always = bool(getattr(module, "ALWAYS_RUN", False))
    entry = None if always else store.lookup(spec)
    if entry is not None:
        log.info("[%d/%d] %s: cached (%s)", i, total, spec.name, spec.fingerprint[:12])
        return entry, "cached", time.perf_counter() - t0, {}
    resumable = bool(getattr(module, "RESUMABLE", False))
    with store.lock(spec):
        entry = None if always else store.lookup(spec)  # another job may have finished it
        if entry is not None:
            log.info("[%d/%d] %s: cached (%s), finished by another job", i, total, spec.name,
                     spec.fingerprint[:12])
            return entry, "cached", time.perf_counter() - t0, {}
        params, status, extra = dict(spec.params), "ran", {}
        if resumable:
            work = store.work_dir(spec)
            found = latest_checkpoint(work)
            if found:
                # Resuming is a run-time fact, not part of the fingerprint.
                params = copy.deepcopy(spec.params)
                params.setdefault("train", {})["resume_dir"] = str(found[0])
                status, extra = "resumed", {"resumed_from_step": found[1]}
                log.info("[%d/%d] %s: resuming from step %d (%s)", i, total, spec.name,
                         found[1], found[0])
            else:
                for leftover in work.iterdir():  # a crash before the first checkpoint
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
            module.run(params, inputs, work, ctx)
            seconds = time.perf_counter() - t0
            if status == "resumed":
                report = _read_report(work / spec.report)
                extra["resumed_from_step"] = int(report.get("resumed_from_step")
                                                 or extra["resumed_from_step"])
            entry = store.publish(spec, work, {"duration_s": round(seconds, 2), **extra})
        except BaseException as exc:
            if not resumable:  # a resumable stage keeps its checkpoints for the next attempt
                store.discard(work)
            elif status == "resumed" and not isinstance(exc, KeyboardInterrupt):
                log.warning("%s failed while resuming from %s. If the checkpoint is the problem, "
                            "remove %s (or run python -m llmops.store gc) to start over.",
                            spec.name, params["train"]["resume_dir"], work)
            raise
    log.info("[%d/%d] %s: %s in %.1fs", i, total, spec.name,
             "resumed and done" if status == "resumed" else "done", seconds)
    return entry, status, seconds, extra
