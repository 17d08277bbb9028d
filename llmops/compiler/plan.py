"""The Plan: stages with their params, inputs and fingerprints, as compiled from a config."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORTS = {
    "decide": "decision_report.json",
    "compute": "compute_plan.json",
    "base": "base_report.json",
    "data": "data_report.json",
    "sft": "training_report.json",
    "eval_base": "base_eval.json",
    "eval": "eval_report.json",
    "export": "export_report.json",
}


@dataclass(frozen=True)
class StageSpec:
    """One stage of a plan.

    Attributes:
        name: Unique name in the plan (equal to kind for now).
        kind: Registry name of the stage implementation (llmops/stages/<kind>.py).
        params: The stage's own typed params as plain JSON data.
        needs: Names of the stages whose outputs this stage reads.
        fingerprint: Hash of kind, params, upstream fingerprints, input file hashes, version.
        input_files: Files the stage reads from outside the store, path -> sha256.
        summary: One line for the plan table.
    """

    name: str
    kind: str
    params: dict[str, Any]
    needs: tuple[str, ...]
    fingerprint: str
    input_files: dict[str, str] = field(default_factory=dict)
    summary: str = ""

    @property
    def report(self) -> str:
        """Returns the file name of the stage's JSON report."""
        return REPORTS.get(self.kind, f"{self.kind}_report.json")


@dataclass(frozen=True)
class Plan:
    """A compiled, executable plan: stages in dependency order plus run-wide settings."""

    stages: tuple[StageSpec, ...]
    run: dict[str, Any]
    config: dict[str, Any]
    version: str
    estimates: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        """Returns the stage with this name."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Returns the plan as JSON-able data."""
        return asdict(self)

    def write(self, path: Path) -> None:
        """Writes the plan as JSON, atomically."""
        from llmops.runner.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Rebuilds a plan from to_dict() output."""
        stages = tuple(
            StageSpec(**{**s, "needs": tuple(s["needs"])}) for s in data["stages"]
        )
        return cls(
            stages=stages, run=data["run"], config=data["config"], version=data["version"],
            estimates=data.get("estimates", {}),
        )

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Reads a plan.json."""
        return cls.from_dict(json.loads(Path(path).read_text()))
