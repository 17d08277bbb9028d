"""Cross-field rules of the monitor group: each alert channel needs its settings. Pure."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.errors import Problem

#: The monitor.alertmanager.* settings each alert channel needs.
CHANNEL_SETTINGS: dict[str, tuple[str, ...]] = {
    "webhook": ("webhook_url",),
    "slack": ("slack_channel",),
    "email": ("email_to", "email_from", "email_smarthost", "email_username"),
}


def monitor_problems(cfg: AppConfig) -> list[Problem]:
    """Returns a problem per missing setting of a channel in monitor.alert_channels."""
    m = cfg.monitor
    if not m.enabled:
        return []
    out = []
    for channel in dict.fromkeys(m.alert_channels):
        for key in CHANNEL_SETTINGS[channel]:
            if not getattr(m.alertmanager, key):
                out.append(Problem(f"monitor.alertmanager.{key}", (
                    f"monitor.alert_channels has {channel}, which needs it. Set "
                    f"monitor.alertmanager.{key}=..., or drop {channel} from "
                    "monitor.alert_channels.")))
    return out
