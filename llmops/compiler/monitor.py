"""Builds the monitor stage (monitor.enabled, after deploy). Pure: no torch.

A plan without a deploy stage (deploy=none or local) gets no monitor stage: there is no endpoint
to watch. monitor=none (the default) adds nothing, so every other fingerprint stays as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmops.compiler.inputs import PlanBuilder, StageInputs


def add_monitor(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the monitor stage: baseline.json, probes.jsonl and alert_rules.yml."""
    m = s.cfg.monitor
    if not m.enabled or not b.has("deploy") or not b.has("eval"):
        return
    params = {
        "probes": m.probes, "seed": s.cfg.seed, "significance": m.significance,
        "thresholds": m.thresholds.model_dump(), "for": m.windows.model_dump(),
        "metrics_host": m.metrics_host, "metrics_port": m.metrics_port,
        "allow_public_bind": m.allow_public_bind,
        "request_timeout_s": m.request_timeout_s, "max_tokens": s.cfg.eval.max_new_tokens,
        "limits": {k: getattr(s.cfg.limits, k)
                   for k in ("row_bytes", "json_depth", "http_total_seconds")},
        "allow_failed_gates": s.cfg.deploy.allow_failed_gates,
    }
    b.add("monitor", params, ["eval", "deploy", "data", "export"],
          f"baseline from eval + deploy latency, {m.probes} held-out probes, Prometheus alert "
          f"rules (significance {m.significance:g})")
