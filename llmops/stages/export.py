"""Stage "export": copies the adapter and writes a merged, standalone model -> export_report.json.

The merge runs in full precision (float32 on the CPU): base + adapter, merge_and_unload(), saved as
safetensors with the tokenizer and its chat template. The merged folder is then reloaded with plain
AutoModelForCausalLM and its logits on probe prompts are compared with base + adapter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmops.compiler.builders.export import ExportParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.data.chat import render
from llmops.errors import StageError

REPORT_NAME = report_name("export")
FORMATS: tuple[str, ...] = ("adapter", "merged")
DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 2.5e-1}
PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Add a task to buy milk due 2025-03-14."}],
    [{"role": "user", "content": "Delete task 42."}],
    [{"role": "user", "content": "Tell me the weather in Paris."}],
)


def _probe_inputs(tokenizer: Any) -> list[Any]:
    """Tokenizes each probe prompt (chat template when possible), one unpadded batch per probe."""
    encoded = []
    for messages in PROBES:
        try:
            text = render(tokenizer, messages, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template may reject a role; plain text still probes
            text = messages[-1]["content"]
        encoded.append(tokenizer(text, return_tensors="pt", add_special_tokens=False))
    return encoded


def _logits(model: Any, probes: list[Any]) -> list[Any]:
    """Returns the float32 logits of the model on each probe."""
    import torch

    with torch.inference_mode():
        return [model(**enc).logits.float() for enc in probes]


def _max_abs_diff(a: list[Any], b: list[Any]) -> float:
    """Returns the largest absolute difference between two lists of logit tensors."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _dir_size_mb(path: Path) -> float:
    """Returns the total size of the files under path in MiB."""
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def _check_chat_template(tokenizer: Any, folder: Path) -> None:
    """Makes sure the saved folder carries the tokenizer's chat template, byte for byte.

    Raises:
        StageError: If the template cannot be found again after reloading the folder.
    """
    from transformers import AutoTokenizer

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not config.get("chat_template") and not (folder / "chat_template.jinja").is_file():
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    if AutoTokenizer.from_pretrained(str(folder)).chat_template != template:
        raise StageError(
            f"export: the chat template saved in {folder} differs from the training one. "
            "Check the tokenizer's chat_template (model.chat_template)."
        )


def merge_adapter(
    base: str,
    adapter: Path,
    out: Path,
    dtype: str = "float32",
    tolerance: float | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Merges a LoRA adapter into its base, saves it, reloads it and checks logit parity.

    Args:
        base: Base model folder or hub id.
        adapter: PEFT adapter folder.
        out: Folder to save the merged model and tokenizer into.
        dtype: Dtype to save the merged weights in (the merge itself runs in float32).
        tolerance: Largest allowed max-abs logit difference; defaults by dtype.
        trust_remote_code: Passed to transformers.

    Returns:
        The parity record {max_abs_logit_diff, tolerance, passed, probes}.

    Raises:
        StageError: If dtype is unknown or the reloaded model's logits differ beyond tolerance.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DEFAULT_TOLERANCE:
        raise StageError(
            f"export: merge_dtype {dtype!r} is not one of {', '.join(DEFAULT_TOLERANCE)}. "
            "Use float32 for an exact merge."
        )
    tol = DEFAULT_TOLERANCE[dtype] if tolerance is None else float(tolerance)
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()
    probes = _probe_inputs(tokenizer)
    reference = _logits(model, probes)

    merged = model.merge_and_unload()
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _check_chat_template(tokenizer, out)
    del model, merged

    reloaded = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, trust_remote_code=trust_remote_code
    ).eval()
    diff = _max_abs_diff(_logits(reloaded, probes), reference)
    parity = {
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "passed": diff <= tol,
        "probes": len(PROBES),
    }
    if not parity["passed"]:
        raise StageError(
            f"export: merged model's logits differ from base + adapter by {diff:.3g} "
            f"(tolerance {tol:g}, merge_dtype={dtype}). Use export.merge_dtype=float32."
        )
    return parity


def run(params: ExportParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Exports the tuned model as an adapter copy and/or a merged standalone model.

    Params read: model (hub_id, trust_remote_code), formats (subset of "adapter", "merged"),
    merge_dtype ("float32"|"float16"|"bfloat16"), parity_tolerance (optional float).
    Inputs: "sft" (adapter/ or model/), "eval" (eval_report.json, recorded as eval_passed),
    "base" for the tiny model.

    Returns:
        {formats, paths (relative to out_dir), parity, size_mb, artifact, eval_passed}.
    """
    from llmops.backends.common import cpu_threads
    from llmops.files import write_json
    from llmops.stages.common import base_model_path
    from llmops.stages.eval import tuned_artifact, tuned_input

    out_dir = Path(out_dir)
    formats = list(params["formats"])
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise StageError(
            f"export: formats {unknown} not supported here. Use a subset of {', '.join(FORMATS)}."
        )
    tuned_in = tuned_input(inputs)
    if tuned_in is None:
        raise StageError("export: no 'sft' input. The plan must run the sft stage first.")
    tuned_stage, tuned_dir = tuned_in
    artifact, src = tuned_artifact(tuned_dir, "export")
    trust = bool(params["model"]["trust_remote_code"])
    paths: dict[str, str] = {}
    parity: dict[str, Any] | None = None
    done: list[str] = []

    if tuned_stage == "merge":
        # The merge stage already merged (and checked) the model: copy its outputs.
        merge_report = json.loads((tuned_dir / report_name("merge")).read_text(encoding="utf-8"))
        for fmt, sub in (("adapter", "adapter"), ("merged", "model")):
            if fmt in formats and (tuned_dir / sub).is_dir():
                shutil.copytree(tuned_dir / sub, out_dir / fmt)
                paths[fmt] = fmt
                done.append(fmt)
        parity = {**merge_report.get("parity", {}), "from": "merge stage",
                  "note": merge_report.get("note")}
    elif artifact == "adapter":
        if "adapter" in formats:
            shutil.copytree(src, out_dir / "adapter")
            paths["adapter"] = "adapter"
            done.append("adapter")
        if "merged" in formats:
            ctx.logger.info("export: merging %s into the base model", src)
            with cpu_threads(ctx.threads):
                parity = merge_adapter(
                    base_model_path(params, inputs),
                    src,
                    out_dir / "merged",
                    dtype=str(params["merge_dtype"]),
                    tolerance=params.get("parity_tolerance"),
                    trust_remote_code=trust,
                )
            paths["merged"] = "merged"
            done.append("merged")
    elif "merged" in formats:
        # A full fine-tune is already a standalone model: copy it as the merged format.
        shutil.copytree(src, out_dir / "merged")
        paths["merged"] = "merged"
        done.append("merged")
        parity = {
            "max_abs_logit_diff": 0.0,
            "tolerance": 0.0,
            "passed": True,
            "skipped": "full fine-tune copied as is; nothing was merged",
        }
    if artifact == "model" and "adapter" in formats and tuned_stage != "merge":
        ctx.logger.warning("export: sft trained the full model (lora=none); no adapter to copy.")

    eval_passed = None
    if inputs.get("eval") is not None:
        eval_report = Path(inputs["eval"]) / report_name("eval")
        if eval_report.is_file():
            eval_passed = json.loads(eval_report.read_text(encoding="utf-8")).get("passed")
    report = {
        "formats": done,
        "paths": paths,
        "parity": parity,
        "size_mb": _dir_size_mb(out_dir),
        "artifact": artifact,
        "source_stage": tuned_stage,
        "eval_passed": eval_passed,
    }
    write_json(out_dir / REPORT_NAME, report)
    return report
