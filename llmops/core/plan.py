"""The stage table, and the Plan: stages with their params, inputs and fingerprints.

Pure: every layer (the compiler, the runner, the stages, compare) imports the table from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Bumped when what a chat template receives (``llmops.data.chat.render``) changes; the recipe of
#: every stage that renders rows. 2: call arguments reach the template as objects (issue 19).
#: 3: assistant messages carry ``reasoning_content`` and chat rows a ``label`` (issue 22).
MESSAGE_FORM = 3


@dataclass(frozen=True)
class StageKind:
    """One row of the stage table.

    Attributes:
        kind: Registry name, part of every fingerprint; the compiler adds stages in table order.
        report: File name of the JSON report the stage writes into its folder.
        module: The module under llmops/stages that implements the kind, when its name is not
            the kind's (the tiny base model is built by tiny_base.py); see `stage_module`.
        trains: Whether the stage trains (an adapter, or the full model) on the data.
        tunes: Whether the stage produces a tuned model (adapter/ or model/) that eval, lm_eval
            and export read; the latest such stage in the plan is "the tuned model".
        recipe: The version of what the stage makes of the same params and inputs, part of its
            fingerprint when not 0: bumped when the code changes its output, so no store entry
            built by the old code is reused. The stages that render rows through the model's
            template carry ``MESSAGE_FORM`` (issue 19: call arguments reach the template as
            objects, and the data stage measures what sft trains on).
        work_keeps: What the runner keeps in a resumable stage's work folder when no checkpoint
            was left (sft: train.backend=openai's job file, so a rerun follows the paid job).
        always_run: The runner never serves the stage from the store: its effects live outside
            its folder (deploy), or it reads what another stage just did (monitor, release).
    """

    kind: str
    report: str
    trains: bool = False
    tunes: bool = False
    module: str = ""
    recipe: int = 0
    work_keeps: tuple[str, ...] = ()
    always_run: bool = False

    @property
    def resumable(self) -> bool:
        """Whether the runner gives the stage a stable work folder per fingerprint and, when an
        interrupted attempt left a checkpoint there, sets params["train"]["resume_dir"] to it:
        every training stage (`trains`)."""
        return self.trains


# The stage table: every layer (compiler, runner, stages, compare) reads kinds, report names and
# order from here.
STAGE_KINDS: tuple[StageKind, ...] = (
    StageKind("decide", "decision_report.json"),
    StageKind("compute", "compute_plan.json"),
    StageKind("base", "base_report.json", module="tiny_base"),
    StageKind("data", "data_report.json", recipe=MESSAGE_FORM),
    StageKind("sft", "training_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM,
              work_keeps=("openai_job.json",)),
    StageKind("dpo", "dpo_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM),
    StageKind("orpo", "orpo_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM),
    StageKind("simpo", "simpo_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM),
    StageKind("kto", "kto_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM),
    StageKind("grpo", "grpo_report.json", trains=True, tunes=True, recipe=MESSAGE_FORM),
    StageKind("merge", "merge_report.json", tunes=True),
    StageKind("eval_base", "base_eval.json", recipe=MESSAGE_FORM),
    StageKind("lm_eval", "lm_eval_report.json"),
    StageKind("eval", "eval_report.json", recipe=MESSAGE_FORM),
    StageKind("export", "export_report.json"),
    StageKind("gguf", "gguf_report.json"),
    StageKind("deploy", "deploy_report.json", always_run=True),
    StageKind("monitor", "baseline.json", always_run=True),
    StageKind("release", "release_report.json", always_run=True),
)
STAGE_ORDER: tuple[str, ...] = tuple(k.kind for k in STAGE_KINDS)
# Where the model to evaluate and export comes from, first match wins: merge, then the
# preference stages, then sft.
TUNED_STAGES: tuple[str, ...] = tuple(k.kind for k in reversed(STAGE_KINDS) if k.tunes)
# The stages whose adapter a merge can name (merge.adapters: sft, dpo, orpo, simpo).
TRAINING_STAGES: tuple[str, ...] = tuple(k.kind for k in STAGE_KINDS if k.trains)
_BY_KIND = {k.kind: k for k in STAGE_KINDS}
#: The stages that train on preference data after sft when both run: pairs
#: (``llmops.stages.pairs``), or KTO's binary feedback (labelled rows, else the pairs unpaired).
PREFERENCE_STAGES: tuple[str, ...] = ("dpo", "orpo", "simpo", "kto")
#: train.method -> the training stages it plans, in order: the one home of what a method runs.
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "none": (), "sft": ("sft",),
    **{k: (k,) for k in PREFERENCE_STAGES},
    **{f"sft_{k}": ("sft", k) for k in PREFERENCE_STAGES},
    "sft_grpo": ("sft", "grpo"),  # GRPO continues an SFT adapter: its completions must parse
}
#: The stages that continue the sft adapter in an sft_<method> plan (merge combines the two).
AFTER_SFT_STAGES: tuple[str, ...] = (*PREFERENCE_STAGES, "grpo")


def recipe(kind: str) -> int:
    """Returns a stage kind's recipe version (0 for most; see ``StageKind.recipe``).

    Raises:
        KeyError: When kind is not in the stage table.
    """
    return _BY_KIND[kind].recipe


def report_name(kind: str) -> str:
    """Returns the file name of a stage kind's JSON report, e.g. 'training_report.json' for sft.

    Raises:
        KeyError: When kind is not in the stage table.
    """
    return _BY_KIND[kind].report


def stage_kind(kind: str) -> StageKind:
    """Returns a stage kind's row of the stage table (the runner reads `resumable`,
    `work_keeps` and `always_run` there, without importing the stage's code).

    Raises:
        KeyError: When kind is not in the stage table.
    """
    return _BY_KIND[kind]


def stage_module(kind: str) -> str:
    """Returns the module that implements a stage kind, e.g. 'llmops.stages.tiny_base' for base.

    Raises:
        KeyError: When kind is not in the stage table.
    """
    return f"llmops.stages.{_BY_KIND[kind].module or kind}"


@dataclass(frozen=True)
class StageSpec:
    """One stage of a plan.

    Attributes:
        name: Unique name in the plan (equal to kind for now).
        kind: Registry name of the stage implementation (its module: `stage_module(kind)`).
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
        return report_name(self.kind)


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
        from llmops.files import write_json

        write_json(path, self.to_dict())

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
