"""The release stage's params and builder: the evaluated model packaged with its card. Pure.

The stage reads every report it describes from the stages that wrote them, so it needs eval and
export, the tuned model's training stages, and whichever of decide, compute, data, gguf, deploy and
monitor the plan has (+ "base"). It always runs (its bundle carries this run's manifest) and writes
release/ (formats, Modelfile, integration_config.json, reports/, manifest.json, monitor/,
README.md = model_card.md, SHA256SUMS), NAME-VERSION.tar.gz and release_report.json.
"""

from typing_extensions import TypedDict

from llmops.compiler.builders.common import LoraParams, ModelFacts
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.config.rules.release import release_formats
from llmops.core.plan import TRAINING_STAGES, TUNED_STAGES

# Stages whose output the release reads when the plan has them, in plan order.
OPTIONAL_INPUTS = ("decide", "compute", "data", "gguf", "deploy", "monitor")


class MethodParams(TypedDict):
    """How the model was tuned."""

    train: str
    """train.method."""
    lora: LoraParams | None
    quant: str
    """quant.type."""


class UsecaseCard(TypedDict):
    """The use case as the card describes it (usecase.*)."""

    name: str
    domain: str
    description: str
    task_type: str


class DatasetParams(TypedDict):
    """The training data as the card describes it."""

    source: str
    hf_id: str | None
    paths: list[str]
    """The files config's paths as written (data.sources' or data.path)."""


class ReleaseParams(TypedDict):
    """Params of the release stage (release enabled, after eval and export)."""

    name: str
    """release.name; null there: llmops-<model.name>."""
    version: str
    """Semantic version."""
    formats: list[str]
    """adapter, merged, gguf (release.formats=auto resolved by
    ``llmops.config.rules.release.release_formats``)."""
    license: str
    """The Hub's lowercase id or an SPDX expression."""
    tags: list[str]
    tarball: bool
    model: ModelFacts
    method: MethodParams
    usecase: UsecaseCard | None
    """None when usecase is off."""
    dataset: DatasetParams
    tuned: str | None
    """The stage whose model is released (merge, dpo or sft)."""
    serve_quantization: str | None
    """The GGUF the Modelfile points at; None without gguf."""


def add_release(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the release stage (release enabled, a passed eval and an export to package)."""
    cfg = s.cfg
    r = cfg.release
    api = s.resolved.backend == "openai" and b.has("deploy")  # the model stays at OpenAI
    if not r.enabled or not (b.has("export") or api) or not b.has("eval"):
        return
    u, d = cfg.usecase, cfg.data
    formats = release_formats(cfg)
    name = r.name or f"llmops-{cfg.model.name}"
    trained = [k for k in (*TRAINING_STAGES, *TUNED_STAGES) if b.has(k)]
    params: ReleaseParams = {
        "name": name, "version": r.version, "formats": formats, "license": r.license,
        "tags": list(r.tags), "tarball": r.tarball, "model": s.facts,
        "method": {"train": cfg.train.method, "lora": s.lora, "quant": cfg.quant.type},
        "usecase": ({"name": u.name, "domain": u.domain, "description": u.description,
                     "task_type": u.task_type} if u.enabled else None),
        "dataset": {"source": d.source, "hf_id": d.hf_id,
                    "paths": [src.path for src in d.sources] or ([d.path] if d.path else [])},
        "tuned": b.tuned(),
        "serve_quantization": cfg.deploy.gguf.served if "gguf" in formats else None,
    }
    needs = ["eval", *(["export"] if b.has("export") else []), *dict.fromkeys(trained),
             *(k for k in OPTIONAL_INPUTS if b.has(k)), *s.base]
    extras = ["card", *formats, "SHA256SUMS", *([".tar.gz"] if r.tarball else [])]
    b.add("release", params, needs, f"{name} {r.version}: {' + '.join(extras)} "
                                    f"(only when the gates passed)")
