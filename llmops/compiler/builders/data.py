"""The data stage's params and builder: rows to checked train/val/test splits. Pure.

The stage writes train/val/test JSONL in the chat form (stages/CONTRACT.md) and data_report.json,
whatever the training method: a sweep over methods shares it. Preference-kind data also writes its
pairs (pref_{train,val,test}.jsonl, data_report.json's "preferences", method "rows"). Pairs derived
from the rows or read from data.preference_path are the preference stages' own (`PairsParams`,
``llmops.stages.pairs``).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import ModelParams
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.fingerprint import data_file_hash, file_sha256
from llmops.data import formats, registry
from llmops.data.limits import DATA_KEYS as DATA_LIMITS

if TYPE_CHECKING:  # the data stage imports DataParams; the schema is the compiler's alone
    from llmops.config.schema import DataConfig, DataSource


class SourceParams(TypedDict):
    """One source of a files config (data.path compiles to one)."""

    path: str
    """An absolute file, save_to_disk folder or glob."""
    format: str
    """auto or a reader format (openai, sharegpt, alpaca, completion, text, preference,
    sharegpt_preference), aliases resolved."""
    weight: float | None
    """Rows taken = weight x valid rows."""
    samples: int | None
    """Exact rows taken."""
    columns: dict[str, str]
    """Only the column renames set."""
    tags: dict[str, str]
    """Only the ShareGPT key/role renames set."""


class DataLimits(TypedDict):
    """limits.* the data stage works under (``llmops.data.limits.Limits``): a row over row_bytes
    or nested past json_depth is one reject; a row's schema patterns take at most pattern_seconds;
    one template render at most template_seconds, else exit 2; a glob past glob_files_warn warns
    once."""

    row_bytes: int
    json_depth: int
    pattern_seconds: float
    template_seconds: float
    glob_files_warn: int


class PreviewParams(TypedDict):
    """The train rows data_report.json shows as sft tokenizes them."""

    rows: int
    """data.preview; 0: none."""
    assistant_only_loss: bool
    """train.assistant_only_loss: the preview's loss spans are sft's."""
    reasoning: NotRequired[Literal["context"]]
    """data.reasoning, only when context (so other fingerprints stay): reasoning out of the
    preview's loss spans, as sft's."""


class DataParams(TypedDict):
    """Params of the data stage. Its input files (every file of every source, a save_to_disk
    folder's files included) are xxh3-128 hashed into its fingerprint. Its inputs: {"base"} for
    the tiny model (the tokenizer measures lengths), else the tokenizer of model.hub_id from the
    local hub cache only; neither: lengths estimated (the report says so)."""

    source: str
    """task_api, files or hf (data=jsonl compiles to files)."""
    sources: list[SourceParams]
    """[] unless files."""
    format: str
    """The row format of hf data (aliases resolved)."""
    columns: dict[str, str]
    tags: dict[str, str]
    hf_id: str | None
    hf_split: str
    system_prompt: str | None
    n_examples: int
    """Rows to generate (task_api)."""
    val_fraction: float
    test_fraction: float
    seed: int
    dedup: bool
    max_length: int
    """Rows longer than this (tokens, through the model's template) are rejected."""
    on_error: str
    """keep (train on the valid rows, report the rest) or fail (exit 5 on any reject)."""
    on_unsupported: str
    """Rows with images, audio or video: fail (exit 5, naming them) or drop (rejects listed)."""
    num_proc: int | None
    model: ModelParams
    limits: DataLimits
    preview: PreviewParams
    reasoning: NotRequired[Literal["context", "drop"]]
    """data.reasoning, only when not train (so existing fingerprints stay): drop writes the rows
    without their reasoning; context keeps it (sft leaves it out of the loss)."""


class PairsParams(TypedDict):
    """Where a preference stage (dpo, orpo, simpo) takes its pairs from, when the data are not
    pairs themselves (then it reads the data stage's pref_*.jsonl): derived from the data stage's
    splits, or read from data.preference_path and split like the rows."""

    source: Literal["derive", "path"]
    preference_path: str | None
    """The absolute file of pairs (path), else None; hashed into the stage's fingerprint."""
    system_prompt: str | None
    seed: int
    """data.seed: derivation and the split of a pairs file."""
    val_fraction: float
    test_fraction: float
    limits: DataLimits


def pairs_params(d: "DataConfig", limits: DataLimits, files: dict[str, str]) -> PairsParams:
    """Returns a preference stage's pairs params (and adds the pairs file's hash to files)."""
    path = None
    if d.preference_path:
        p = Path(d.preference_path).expanduser().resolve()
        files[str(p)] = file_sha256(p)
        path = str(p)
    return {"source": "path" if path else "derive", "preference_path": path,
            "system_prompt": d.system_prompt, "seed": d.seed, "val_fraction": d.val_fraction,
            "test_fraction": d.test_fraction, "limits": limits}


def data_limits(cfg_limits: object) -> DataLimits:
    """Returns limits.* as the data-reading stages take them."""
    return cast(DataLimits, {k: getattr(cfg_limits, k) for k in DATA_LIMITS})


def data_sources(d: "DataConfig") -> list[SourceParams]:
    """Returns the sources of a files config as the data stage reads them: ``data.path`` as a
    one-source list, paths made absolute, aliases resolved, only the mappings set."""
    from llmops.config.schema import DataSource

    given = [DataSource(path=d.path, format=d.format, columns=d.columns, tags=d.tags)] if d.path \
        else [registry_source(d)] if d.registry else list(d.sources)
    out: list[SourceParams] = []
    for src in given:
        out.append({
            "path": str(Path(src.path).expanduser().resolve()),
            "format": formats.reader_format(src.format), "weight": src.weight,
            "samples": src.samples, "columns": src.columns.model_dump(exclude_none=True),
            "tags": src.tags.model_dump(exclude_none=True),
        })
    return out


def registry_source(d: "DataConfig") -> "DataSource":
    """Returns the source a LLaMA-Factory registry entry names (``data.registry``, ``data.name``;
    see ``llmops.data.registry``); data.columns / data.tags set by the user override its own."""
    from llmops.config.schema import DataColumns, DataSource, DataTags

    entry = registry.read_entry(d.registry or "", d.name or "")
    columns = {**entry["columns"], **d.columns.model_dump(exclude_none=True)}
    tags = {**entry["tags"], **d.tags.model_dump(exclude_none=True)}
    return DataSource(path=entry["path"], format=entry["format"], samples=entry["samples"],
                      columns=DataColumns(**columns), tags=DataTags(**tags))


def add_data(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the data stage: rows to checked train/val/test splits, the same for every method.

    Every file of every source (a dataset folder's files included) is hashed into the stage's
    fingerprint, so editing any of them prepares the data again.
    """
    d = s.cfg.data
    files: dict[str, str] = {}
    sources = data_sources(d) if d.source in ("files", "jsonl") else []
    for src in sources:
        for f in formats.files_of(formats.input_paths(src["path"])):
            files[str(f)] = data_file_hash(f)
    limits = data_limits(s.cfg.limits)
    params: DataParams = {
        "source": "files" if sources else d.source, "sources": sources,
        "format": formats.reader_format(d.format), "columns": d.columns.model_dump(
            exclude_none=True), "tags": d.tags.model_dump(exclude_none=True),
        "hf_id": d.hf_id, "hf_split": d.hf_split, "system_prompt": d.system_prompt,
        "n_examples": d.n_examples, "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction, "seed": d.seed, "dedup": d.dedup,
        "max_length": d.max_length, "on_error": d.on_error,
        "on_unsupported": d.on_unsupported, "num_proc": d.num_proc,
        "model": s.model, "limits": limits,
        # the preview shows the rows as sft tokenizes them, its loss mask included
        "preview": {"rows": d.preview, "assistant_only_loss": s.cfg.train.assistant_only_loss},
    }
    if d.reasoning != "train":  # only then: the fingerprints of data without the option stay
        params["reasoning"] = d.reasoning
        if d.reasoning == "context":
            params["preview"]["reasoning"] = "context"
    if d.source == "task_api":
        what = f"Task-API x{d.n_examples}"
    elif d.source == "hf":
        what = f"{d.hf_id}[{d.hf_split}]"
    else:
        what = " + ".join(_source_text(src) for src in sources)
    train_share = 1 - d.val_fraction - d.test_fraction
    shares = f"{train_share:.0%}/{d.val_fraction:.0%}/{d.test_fraction:.0%}"
    checks = "on_error=fail" if d.on_error == "fail" else "rejects reported"
    b.add("data", params, list(s.base),
          f"{what} -> checked ({checks}) -> train/val/test ({shares})", files)


def _source_text(src: SourceParams) -> str:
    share = (f" x{src['samples']} rows" if src["samples"] is not None else
             f" weight {src['weight']:g}" if src["weight"] is not None else "")
    fmt = "" if src["format"] == "auto" else f" ({src['format']})"
    return f"{Path(src['path']).name}{fmt}{share}"
