"""Schema of the release group: the model card and bundle the release stage writes.

Pure: imports no torch. Swapped into schema.AppConfig as the ``release`` group; the cross-field
rules (formats the plan must produce, eval on) live in rules/release.py.
"""

# Annotations are evaluated as the classes are made (no postponed annotations): see schema.py.
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from llmops.config.names import release_name, semver
from llmops.config.types import STRICT, Text

# License ids of the Hugging Face Hub that are not SPDX identifiers (model families' own licenses).
HUB_LICENSES = ("other", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "gemma")
FORMATS = ("adapter", "merged", "gguf")


def _as_text(value: object) -> object:
    """Turns a number Hydra parsed (release.version=1.0) into text, so the semver check names it."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _license(value: str) -> str:
    """Returns the Hub's form of a license id (lowercase): an SPDX id or one of HUB_LICENSES."""
    if value.lower() in HUB_LICENSES:
        return value.lower()
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    try:
        canonical = canonicalize_license_expression(value)
    except InvalidLicenseExpression:
        canonical = ""
    if not canonical or " " in canonical:  # one id, not an expression: the Hub takes one
        raise PydanticCustomError(
            "license", "must be one SPDX license id (e.g. apache-2.0, mit, cc-by-4.0) or one of "
                       f"the Hub's {', '.join(HUB_LICENSES)}")
    return canonical.lower()


ReleaseName = Annotated[str, AfterValidator(release_name)]
SemVer = Annotated[str, BeforeValidator(_as_text), AfterValidator(semver)]
License = Annotated[str, AfterValidator(_license)]


class ReleaseConfig(BaseModel):
    """The release: a Hugging Face model card and a checksummed bundle of the passed model."""

    model_config = STRICT

    enabled: bool = Field(description="Run the release stage (release=none turns it off).")
    name: ReleaseName | None = Field(description="Release name; null: llmops-<model.name>.")
    version: SemVer = Field(description="Semantic version of the release, e.g. 1.0.0.")
    formats: list[Literal["adapter", "merged", "gguf"]] | Literal["auto"] = Field(
        description="What the bundle holds; auto: every format the plan exports.")
    license: License = Field(description="License id written to the card (SPDX or the Hub's).")
    tags: list[Text] = Field(description="Extra tags for the card's metadata.")
    tarball: bool = Field(description="Also write <name>-<version>.tar.gz of the release folder.")
