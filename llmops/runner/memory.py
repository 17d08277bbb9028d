"""What the runner says when a stage runs out of memory or its process dies: pure, no torch.

The supervisor (llmops.runner.supervise) and the stage process (llmops.runner.child) both build
their messages here: the measured peak, what the compute plan planned for the stage, the fix.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from llmops.core.plan import TRAINING_STAGES

GB = 1e9
TRAINING_KINDS = TRAINING_STAGES

#: Why a stage's process may have died by a signal, beyond the out-of-memory killer's SIGKILL.
_SIGNAL_CAUSES = {
    "SIGSEGV": "a crash in native code (torch, a tokenizer, llama.cpp)",
    "SIGBUS": "a crash in native code, or a memory-mapped file that shrank or a full /dev/shm",
    "SIGABRT": "an abort in native code (a failed check in torch or a CUDA driver error)",
    "SIGILL": "native code built for another CPU",
    "SIGTERM": "something outside llmops terminated the stage's process",
    "SIGINT": "something outside llmops interrupted the stage's process",
}


def is_out_of_memory(exc: BaseException) -> bool:
    """Says whether an exception means an allocation failed (without importing torch).

    MemoryError (Python, numpy), torch.OutOfMemoryError (CUDA) and torch's CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory").
    """
    if isinstance(exc, MemoryError):
        return True
    if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "CUDA out of memory" in str(exc))


def planned(compute_report: Path | None, kind: str, device: str) -> dict[str, Any]:
    """Returns what compute_plan.json planned for a stage of `kind`: {host_gb, device_gb, what}.

    A per-stage estimate (`stages.<kind>`) when the plan has one, else the training estimate for
    a training stage; {} when there is no plan (no compute stage) or nothing for this stage.
    """
    try:
        report = json.loads(Path(compute_report).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    if not isinstance(report, dict):
        return {}
    stage = (report.get("stages") or {}).get(kind)
    if isinstance(stage, dict) and ("host_gb" in stage or "device_gb" in stage):
        return {"host_gb": stage.get("host_gb"), "device_gb": stage.get("device_gb"),
                "what": "for this stage"}
    if kind in TRAINING_KINDS:
        total = report.get("total_gb")
        if device == "cpu":
            return {"host_gb": total, "device_gb": None, "what": "for training"}
        return {"host_gb": report.get("host_gb"), "device_gb": total, "what": "for training"}
    total = report.get("total_gb")
    return {"host_gb": None, "device_gb": None,
            "what": f"nothing for this stage (the plan covers training: {total} GB)"}


def fix_for(kind: str, params: dict[str, Any], device: str) -> str:
    """Returns the knob(s) that lower a stage's peak memory, with values where they are known."""
    if kind in TRAINING_KINDS:
        train = params.get("train") or {}
        size = train.get("batch_size")
        parts = []
        if isinstance(size, int) and size > 1:
            parts.append(f"train.batch_size={max(1, size // 2)} (train.effective_batch stays, "
                         "through gradient accumulation)")
        length = train.get("max_length")
        if isinstance(length, int) and length > 256:
            parts.append(f"train.max_length={length // 2}")
        if device != "cpu" and (params.get("quant") or {}).get("type", "none") == "none":
            parts.append("quant=nf4")
        if not parts:
            parts.append("a smaller model or a machine with more memory")
        return " or ".join(parts)
    if kind in ("eval", "eval_base"):
        size = params.get("batch_size")
        fix = f"eval.batch_size={max(1, size // 2)}" if isinstance(size, int) and size > 1 \
            else "eval.limit=N (fewer test rows)"
        return f"{fix} or a smaller eval.max_new_tokens"
    if kind == "lm_eval":
        return "a smaller eval.lm_eval.batch_size"
    if kind == "data":
        return "data.num_proc=1 or a smaller data.n_examples"
    return "a machine with more memory (this stage loads the whole model)"


def gb(n_bytes: float | None) -> str:
    """Formats a byte count as GB with one decimal ("?" when unknown)."""
    return "?" if n_bytes is None else f"{n_bytes / GB:.1f} GB"


def plan_text(plan: dict[str, Any], device: str) -> str:
    """Says what was planned, e.g. "planned 2.5 GB for this stage" (or that nothing was)."""
    if not plan:
        return "no memory plan (the plan has no compute stage)"
    key = "host_gb" if device == "cpu" else "device_gb"
    value = plan.get(key)
    if value is None:
        value = plan.get("host_gb")
    if value is None:
        return f"planned {plan.get('what')}"
    return f"planned {value} GB {plan.get('what')}"


def signal_name(number: int) -> str:
    """Returns SIGKILL for 9, etc. (the number as text when unknown)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_message(stage: str, kind: str, returncode: int, peak_bytes: float | None,
                  plan: dict[str, Any], fix: str, device: str) -> str:
    """Says why a stage's process ended without reporting: which signal, the peak, the fix."""
    peak = f"peak RSS {gb(peak_bytes)}, {plan_text(plan, device)}"
    resume = (" Finished stages stay in the store; a rerun resumes training from its last "
              "checkpoint." if kind in TRAINING_KINDS else
              " Finished stages stay in the store; a rerun starts from this stage.")
    if returncode < 0:
        name = signal_name(-returncode)
        if name == "SIGKILL":
            return (f"{stage}: the stage's process was killed by SIGKILL — most likely the "
                    f"kernel's out-of-memory killer: {peak}; fix: {fix}.{resume}")
        cause = _SIGNAL_CAUSES.get(name, "see the log above")
        return f"{stage}: the stage's process died of {name} ({cause}): {peak}.{resume}"
    return (f"{stage}: the stage's process exited with code {returncode} without reporting an "
            f"error (something in the stage called exit): {peak}.{resume}")


def oom_message(stage: str, kind: str, exc: BaseException, host_peak: float | None,
                device_peak: float | None, plan: dict[str, Any], fix: str, device: str) -> str:
    """Says that a stage ran out of memory: the error, the measured peak, the plan, the fix."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    where = "GPU" if type(exc).__name__ == "OutOfMemoryError" else "memory"
    measured = f"peak RSS {gb(host_peak)}"
    if device_peak is not None:
        measured += f", peak GPU memory allocated {gb(device_peak)}"
    return (f"{stage}: out of {where} ({type(exc).__name__}: {first or 'no detail'}): "
            f"{measured}, {plan_text(plan, device)}; fix: {fix}.")
