"""The decide stage's params and builder: the go/no-go assessment of the use case. Pure."""

from typing import Any

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import HardwareParams, ModelFacts, TrainParams
from llmops.compiler.inputs import PlanBuilder, StageInputs


class UsecaseParams(TypedDict):
    """Every usecase.* field, as the schema (llmops/config/usecase.py) describes them."""

    enabled: bool
    name: str
    domain: str
    description: str
    task_type: str
    refinement: bool
    examples_available: int
    stability_months: float
    measurable: bool
    hours_available: float
    prompting_error_rate: float
    target_error_rate: float
    monthly_queries: int
    hours_per_task: float
    automation_rate: float
    hourly_rate_usd: float
    tasks_per_month: int
    infra_cost_monthly_usd: float
    maintenance_cost_monthly_usd: float
    investment_usd: float
    api_cost_per_1k_queries_usd: float
    enforce: bool
    """A no-go stops the plan (the runner reads the report's verdict)."""


class DecideParams(TypedDict):
    """Params of the decide stage (usecase enabled; writes decision_report.json). model, train and
    hardware pick the method it recommends (QLoRA / LoRA / full)."""

    usecase: UsecaseParams
    model: ModelFacts
    train: TrainParams
    hardware: HardwareParams
    api: NotRequired[dict[str, Any]]
    """Only with train.backend=openai: the upload estimate (``llmops.config.rules.openai_ft.
    upload_estimate``), whose cost decide weighs against self-hosted LoRA's."""


def add_decide(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the decide stage (usecase enabled): the go/no-go assessment."""
    u = s.cfg.usecase
    if not u.enabled:
        return
    params: DecideParams = {"usecase": UsecaseParams(**u.model_dump()), "model": s.facts,
                            "train": s.train, "hardware": s.hardware}
    if s.resolved.backend == "openai":  # only then: other fingerprints stay
        from llmops.config.rules.openai_ft import upload_estimate

        params["api"] = upload_estimate(s.cfg)
    b.add("decide", params, [],
          f"go/no-go for '{u.name}': criteria, red flags, method, ROI"
          f"{'' if u.enforce else ' (not enforced)'}")
