"""Schema of the usecase group: the business case the decide stage weighs before any training.

Pure: imports no torch. Swapped into schema.AppConfig as the ``usecase`` group.
"""

# Annotations are evaluated as the classes are made (no postponed annotations): see schema.py.
from typing import Literal

from pydantic import BaseModel, Field

from llmops.config.types import STRICT, Amount, Count


class UsecaseConfig(BaseModel):
    """The use case behind a fine-tune: the go/no-go criteria inputs and the ROI inputs."""

    model_config = STRICT

    enabled: bool = Field(description="Run the decide stage (usecase=none turns it off).")
    name: str = Field("none", description="Short name of the use case, for reports.")
    domain: str = Field("general", description="Domain, e.g. ecommerce, medical, legal, finance.")
    description: str = Field("", description="What the model should do, in the user's words.")
    task_type: Literal["formatting", "classification", "extraction", "tool_calling", "style",
                       "knowledge", "reasoning", "other"] = Field(
        "other", description="Kind of behaviour to teach; 'knowledge' points to RAG.")
    refinement: bool = Field(
        False, description="The model already does the task; only preferences need tuning (DPO).")
    examples_available: Count = Field(0, description="Labelled examples on hand.")
    stability_months: Amount = Field(
        0, description="How long the task's requirements are expected to stay stable.")
    measurable: bool = Field(False, description="Success has an automatic metric or test set.")
    hours_available: Amount = Field(
        0, description="Team hours committed to data, training, evaluation and upkeep.")
    prompting_error_rate: float = Field(
        0, ge=0, le=1, description="Error rate of the best prompting baseline today (0..1).")
    target_error_rate: float = Field(
        0.05, ge=0, le=1, description="Error rate the use case needs (0..1): the quality target; "
                                      "eval's auto accuracy gate needs 1 - this.")
    monthly_queries: Count = Field(0, description="Expected queries per month in production.")
    hours_per_task: Amount = Field(0, description="Human hours one task takes today.")
    automation_rate: float = Field(
        0.8, ge=0, le=1, description="Share of those hours the model is expected to save.")
    hourly_rate_usd: Amount = Field(0, description="Loaded cost of one human hour (USD).")
    tasks_per_month: Count = Field(0, description="Tasks per month the model would handle.")
    infra_cost_monthly_usd: Amount = Field(
        0, description="Monthly serving infrastructure cost of the self-hosted model.")
    maintenance_cost_monthly_usd: Amount = Field(
        0, description="Monthly upkeep: retraining, monitoring, on-call (USD).")
    investment_usd: Amount = Field(
        0, description="One-off cost: data labelling, engineering, training runs (USD).")
    api_cost_per_1k_queries_usd: Amount = Field(
        0, description="Hosted-API price per 1,000 queries, for the break-even.")
    enforce: bool = Field(True, description="A no-go stops the plan (decide.enforce=false: warn).")
