"""Builds the release stage (release=default, after deploy and monitor). Pure: no torch.

The stage reads every report it describes from the stages that wrote them, so it needs eval and
export, the tuned model's training stages, and whichever of decide, compute, data, gguf, deploy and
monitor the plan has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.config.rules.release import release_formats
from llmops.core.plan import TRAINING_STAGES, TUNED_STAGES

if TYPE_CHECKING:
    from llmops.compiler.inputs import PlanBuilder, StageInputs

# Stages whose output the release reads when the plan has them, in plan order.
OPTIONAL_INPUTS = ("decide", "compute", "data", "gguf", "deploy", "monitor")


def add_release(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the release stage (release enabled, a passed eval and an export to package)."""
    cfg = s.cfg
    r = cfg.release
    if not r.enabled or not b.has("export") or not b.has("eval"):
        return
    u, d = cfg.usecase, cfg.data
    formats = release_formats(cfg)
    gguf = cfg.deploy.gguf.quantization
    name = r.name or f"llmops-{cfg.model.name}"
    trained = [k for k in (*TRAINING_STAGES, *TUNED_STAGES) if b.has(k)]
    params = {
        "name": name, "version": r.version, "formats": formats, "license": r.license,
        "tags": list(r.tags), "tarball": r.tarball, "model": s.facts,
        "method": {"train": cfg.train.method, "lora": s.lora, "quant": cfg.quant.type},
        "usecase": ({"name": u.name, "domain": u.domain, "description": u.description,
                     "task_type": u.task_type} if u.enabled else None),
        "dataset": {"source": d.source, "hf_id": d.hf_id,
                    "paths": [src.path for src in d.sources] or ([d.path] if d.path else [])},
        "tuned": b.tuned(),
        "serve_quantization": gguf[0] if "gguf" in formats else None,
    }
    needs = ["eval", "export", *dict.fromkeys(trained),
             *(k for k in OPTIONAL_INPUTS if b.has(k)), *s.base]
    extras = ["card", *formats, "SHA256SUMS", *([".tar.gz"] if r.tarball else [])]
    b.add("release", params, needs, f"{name} {r.version}: {' + '.join(extras)} "
                                    f"(only when the gates passed)")
