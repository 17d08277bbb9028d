"""The monitor command's live figures in Prometheus's exposition format (prometheus_client).

Metric names come from llmops.monitor.rules, the same table the stage's alert rules use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmops.serving import alerts as rules


class Exporter:
    """Holds the monitor's metrics in their own registry and serves them over HTTP."""

    def __init__(self, model: str) -> None:
        """Creates the metrics (labelled with the model) in a fresh registry."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.model = model
        self.gauges = {f.name: Gauge(f.gauge, f"Live {f.title} over the probes scored so far.",
                                     ["model"], registry=self.registry) for f in rules.FIGURES}
        self.significant = Gauge(rules.SIGNIFICANT_DROP, "1 while the live rate is "
                                 "significantly below the baseline.", ["model", "figure"],
                                 registry=self.registry)
        self.firing = Gauge(rules.FIRING, "1 while the monitor sees the alert's condition.",
                            ["model", "alert"], registry=self.registry)
        self.latency = Histogram(rules.LATENCY, "Probe request latency in seconds.", ["model"],
                                 registry=self.registry)
        self.probes = Counter(rules.PROBES, "Probes sent.", ["model"], registry=self.registry)
        self.errors = Counter(rules.ERRORS, "Probe requests that failed.", ["model"],
                              registry=self.registry)
        self.server: Any = None

    def serve(self, host: str, port: int) -> int:
        """Starts the HTTP endpoint on host:port (0: a free port); returns the port."""
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stops the HTTP endpoint, if one runs."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def observe(self, seconds: float | None, failed: bool = False) -> None:
        """Records one probe: its latency, or its failure."""
        self.probes.labels(self.model).inc()
        if failed:
            self.errors.labels(self.model).inc()
        elif seconds is not None:
            self.latency.labels(self.model).observe(seconds)

    def update(self, result: Mapping[str, Any]) -> None:
        """Sets the gauges from a ``score.compare`` result."""
        for name, entry in result["figures"].items():
            if entry["now"] is not None:
                self.gauges[name].labels(self.model).set(entry["now"])
            self.significant.labels(self.model, name).set(int(entry["significant"]))
            self.firing.labels(self.model, entry["alert"]).set(int(entry["firing"]))
        lat = result["latency"]
        self.firing.labels(self.model, lat["alert"]).set(int(lat["firing"]))
