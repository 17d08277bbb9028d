"""Schema of the monitor group: the baseline, probe set and alert rules written after deploy.

Pure: imports no torch. Swapped into schema.AppConfig as the ``monitor`` group; the values live in
conf/monitor/default.yaml (monitor=none extends it with enabled: false).
"""

# Annotations are evaluated as the classes are made (no postponed annotations): see schema.py.
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from llmops.config.types import STRICT, Fraction, Rows, Text, Timeout

#: A Prometheus duration, e.g. 30s, 5m, 1h30m.
Duration = Annotated[str, Field(pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$")]


class MonitorThresholds(BaseModel):
    """How far live figures may fall from the baseline before an alert fires."""

    model_config = STRICT

    accuracy_drop: Fraction = Field(description="Allowed drop of call exact match (tool rows).")
    json_validity_drop: Fraction = Field(description="Allowed drop of the calls' JSON validity.")
    refusal_rate_drop: Fraction = Field(description="Allowed drop of the refusal rate.")
    latency_factor: float = Field(gt=1, le=1000, description="p95 latency may reach baseline p95 "
                                                             "times this.")
    latency_min_s: Timeout = Field(description="The p95 latency threshold is never below this.")


class MonitorWindows(BaseModel):
    """The `for:` window of each alert rule."""

    model_config = STRICT

    accuracy: Duration = Field(description="Window of the accuracy alert.")
    json_validity: Duration = Field(description="Window of the JSON validity alert.")
    refusal_rate: Duration = Field(description="Window of the refusal rate alert.")
    latency: Duration = Field(description="Window of the latency alert.")


class AlertmanagerSettings(BaseModel):
    """Where alerts go: the Alertmanager prometheus.yml sends to and its receivers' settings
    (secrets are read from files in secrets_dir, never written in the config)."""

    model_config = STRICT

    url: Text = Field(description="host:port of the Alertmanager prometheus.yml alerts.")
    secrets_dir: Text = Field(description="Folder, where Alertmanager runs, of the secret files "
                                          "(webhook_token, slack_api_url, smtp_password).")
    webhook_url: str | None = Field(description="URL the webhook channel posts alerts to.")
    webhook_token: bool = Field(description="Send secrets_dir/webhook_token as a bearer token.")
    slack_channel: str | None = Field(description="Slack channel alerts are posted to, e.g. "
                                                  "'#alerts' (the webhook URL: a secret file).")
    email_to: str | None = Field(description="Address the email channel mails alerts to.")
    email_from: str | None = Field(description="Sender address of alert mails.")
    email_smarthost: str | None = Field(description="SMTP server host:port.")
    email_username: str | None = Field(description="SMTP user (its password: a secret file).")


class MonitorConfig(BaseModel):
    """The monitor stage (after deploy) and the defaults of ``python -m llmops.monitor``."""

    model_config = STRICT

    enabled: bool = Field(description="Add the monitor stage (it needs deploy=openai or ollama).")
    probes: Rows = Field(description="Held-out test rows drawn into the probe set.")
    significance: float = Field(gt=0, lt=0.5, description="One-sided level of the live-vs-"
                                                          "baseline two-proportion z-test.")
    thresholds: MonitorThresholds = Field(description="Alert thresholds relative to the baseline.")
    windows: MonitorWindows = Field(alias="for", description="`for:` window of each alert.")
    metrics_host: Text = Field(description="Interface the monitor's metrics endpoint binds.")
    allow_public_bind: bool = Field(description="Allow a metrics_host that is not a loopback "
                                                "address (exposes the live figures).")
    metrics_port: int = Field(ge=0, le=65535, description="Port of the metrics endpoint; 0: free.")
    request_timeout_s: Timeout = Field(description="Timeout of one probe request.")
    alert_channels: list[Literal["webhook", "slack", "email"]] = Field(
        description="Alertmanager receivers written to alertmanager.yml (none: no file).")
    alertmanager: AlertmanagerSettings = Field(description="Alertmanager address and the "
                                                           "alert channels' settings.")
