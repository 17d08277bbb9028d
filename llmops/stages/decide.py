"""Stage `decide`: whether fine-tuning is the right move for the use case (go / no-go).

Pure (llmops.planning.decide); writes decision_report.json. The stage returns the report; the
runner stops the plan on a no-go when usecase.enforce is true (like failed eval gates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.decide import DecideParams
from llmops.config.hydra.groups import option_files
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.files import write_json
from llmops.planning.decide import assess

REPORT_NAME = report_name("decide")


def run(params: DecideParams, inputs: dict[str, Path], out_dir: Path,
        ctx: StageContext) -> dict[str, Any]:
    """Assesses the use case and writes decision_report.json.

    Args:
        params: {"usecase": UsecaseConfig fields, "model": architecture facts, "train": dict,
            "hardware": the resolved profile}; model/train/hardware pick QLoRA / LoRA / full.
        inputs: None needed.
        out_dir: The stage's output folder.
        ctx: Run context (logger).

    Returns:
        The decision report (report["go"] is the verdict).
    """
    compute = {k: params.get(k) for k in ("model", "train", "hardware")}
    report = assess(params["usecase"], compute if compute["model"] else None,
                    catalog=option_files(), api=params.get("api"))
    method = report["method"]
    ctx.logger.info("decide: %s -> %s (%s%s)", report["usecase"], report["verdict"].upper(),
                    method["training"], f" + {method['adapter']}" if method["adapter"] else "")
    for reason in report["reasons"] if not report["go"] else []:
        ctx.logger.warning("decide: %s", reason)
    write_json(Path(out_dir) / REPORT_NAME, report)
    return report
