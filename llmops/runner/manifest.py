"""The run manifest: what ran, with which config, libraries, data, seeds and hardware."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from llmops.core.plan import Plan
from llmops.files import write_json

LIBRARIES = (
    "llmops", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers",
    "bitsandbytes", "hydra-core", "omegaconf", "pydantic", "unsloth", "wandb",
)


def library_versions() -> dict[str, str | None]:
    """Returns installed versions of the libraries that shape results (without importing them)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Manifest:
    """Keeps manifest.json in the run folder true after every stage."""

    def __init__(self, plan: Plan, run_dir: Path, overrides: list[str] | None = None,
                 meta: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict[str, Any] = {
            "llmops_version": plan.version,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "overrides": overrides or [],
            "config": plan.config,
            "seeds": {"seed": plan.run["seed"], "data": plan.config["data"]["seed"],
                      "train": plan.config["train"]["seed"]},
            "hardware": {**plan.run["hardware"], "platform": platform.platform(),
                         "python": sys.version.split()[0]},
            "run": {k: v for k, v in plan.run.items() if k != "hardware"},
            "libraries": library_versions(),
            "data_hashes": {},
            "stages": {s.name: {"kind": s.kind, "status": "pending", "fingerprint": s.fingerprint,
                                "needs": list(s.needs)} for s in plan.stages},
            **(meta or {}),
        }
        self.on_finish: list[Callable[[str], None]] = []  # e.g. tracking sinks' finish(status)
        self.write()

    def stage(self, name: str, **fields: Any) -> None:
        """Updates one stage's record and rewrites the manifest."""
        self.data["stages"][name].update(fields)
        self.write()

    def finish(self, status: str, **fields: Any) -> None:
        """Records the run's final status."""
        self.data.update(status=status, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)
        self.write()
        for callback in self.on_finish:
            callback(status)

    def write(self) -> None:
        """Writes manifest.json atomically."""
        write_json(self.path, self.data)
