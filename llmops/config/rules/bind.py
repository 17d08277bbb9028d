"""Which interfaces llmops's servers may bind: loopback only, unless the config opts in. Pure.

deploy=openai's llama-cpp-python server (deploy.openai.host) and `python -m llmops.monitor`'s
Prometheus endpoint (monitor.metrics_host) answer anyone who can reach the interface they bind:
the model with no API key, and the live figures. A host that is not a loopback address (127.0.0.0/8,
::1, localhost) is refused (exit 2) unless deploy.openai.allow_public_bind=true /
monitor.allow_public_bind=true (or the monitor's --allow-public-bind) says it is meant.
"""

from __future__ import annotations

import ipaddress

from llmops.config.schema import AppConfig
from llmops.errors import Problem

#: What each server exposes, for the message.
EXPOSES = {
    "deploy.openai.host": "the served model (llama-cpp-python's OpenAI-compatible API, no key)",
    "monitor.metrics_host": "the monitor's live figures (Prometheus metrics)",
}


def is_loopback(host: str) -> bool:
    """Tells whether host names this machine's loopback interface only (not '', not 0.0.0.0)."""
    text = host.strip().strip("[]")
    if text.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def public_bind_message(key: str, host: str, opt_in: str) -> str:
    """Returns the refusal of a non-loopback bind: what it exposes and how to opt in."""
    every = " (every interface)" if host.strip() in ("", "0.0.0.0", "::", "[::]") else ""
    return (f"{host!r}{every} is not a loopback address: it would expose {EXPOSES[key]} to every "
            f"machine that can reach it. Use 127.0.0.1, or set {opt_in} to bind it anyway "
            "(behind a firewall or a reverse proxy with authentication).")


def bind_problems(cfg: AppConfig) -> list[Problem]:
    """Returns a problem per server of the plan that binds a non-loopback host without opt-in."""
    out = []
    d, m = cfg.deploy, cfg.monitor
    if d.target == "openai" and not is_loopback(d.openai.host) and not d.openai.allow_public_bind:
        out.append(Problem("deploy.openai.host", public_bind_message(
            "deploy.openai.host", d.openai.host, "deploy.openai.allow_public_bind=true")))
    if m.enabled and not is_loopback(m.metrics_host) and not m.allow_public_bind:
        out.append(Problem("monitor.metrics_host", public_bind_message(
            "monitor.metrics_host", m.metrics_host, "monitor.allow_public_bind=true")))
    return out
