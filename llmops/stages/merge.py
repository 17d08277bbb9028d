"""Stage `merge`: adapters merged into a full-precision base -> model/, adapter/, merge_report.json.

One adapter is merged as is (merge_and_unload). Several are first combined with peft's
add_weighted_adapter (linear, cat, ties, dare_linear, dare_ties, svd) using the configured weights
and density; the combined adapter is saved too. The base is always loaded in float32, even when
training used a 4-bit or 8-bit base (see NOTE_QUANT). The merged folder is reloaded with plain
transformers and its logits on probe prompts are compared with base + adapter(s).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmops.compiler.builders.merge import MergeParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError

REPORT_NAME = report_name("merge")
NOTE_FULL = ("Merged into the full-precision (float32) base: the merged model needs no peft and "
             "loads with AutoModelForCausalLM.from_pretrained.")
NOTE_QUANT = ("Training used quant.type={q}: the adapter was learned against {q}-quantized base "
              "weights, but it is merged here into the float32 base. The merged model is the "
              "full-precision base plus the adapter, not the quantized model evaluated during "
              "training; expect small output differences, and quantize the merged model again "
              "(e.g. GGUF q4/q8, bitsandbytes) if you deploy it quantized.")


def _adapter_dirs(params: dict[str, Any], inputs: dict[str, Path]) -> list[Path]:
    dirs = []
    for a in params["adapters"]:
        if "stage" in a:
            if inputs.get(a["stage"]) is None:
                raise StageError(f"merge: no '{a['stage']}' input. The plan must run it first.")
            folder = Path(inputs[a["stage"]]) / "adapter"
        else:
            folder = Path(a["path"])
        if not (folder / "adapter_config.json").is_file():
            raise StageError(f"merge: {folder} holds no adapter_config.json. List PEFT adapter "
                             "folders (or sft, dpo) in merge.adapters.")
        dirs.append(folder)
    if not dirs:
        raise StageError("merge: no adapter to merge. Set merge.adapters=[sft] or a folder.")
    return dirs


def run(params: MergeParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Merges the adapters into the base and checks the reloaded model against base + adapters.

    Params read: model, method, adapters ([{"stage": name} | {"path": dir}]), weights, density,
    majority_sign_method, dtype, quant_trained, parity_tolerance (optional).
    Inputs: the stages named in adapters, "base" for the tiny model.

    Returns:
        The report written to merge_report.json.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.files import write_json
    from llmops.stages.common import base_model_path, set_seed
    from llmops.stages.export import (
        DEFAULT_TOLERANCE,
        _check_chat_template,
        _logits,
        _max_abs_diff,
        _probe_inputs,
    )

    out_dir = Path(out_dir)
    dirs = _adapter_dirs(params, inputs)
    weights = [float(w) for w in params["weights"]]
    if len(weights) != len(dirs):
        raise StageError(f"merge: {len(weights)} weights for {len(dirs)} adapters. Give one "
                         "weight per adapter in merge.weights.")
    method = str(params["method"])
    dtype = str(params["dtype"])
    if dtype not in DEFAULT_TOLERANCE:
        raise StageError(f"merge: dtype {dtype!r} is not one of {', '.join(DEFAULT_TOLERANCE)}.")
    tol = float(params.get("parity_tolerance") or DEFAULT_TOLERANCE[dtype])
    trust = bool(params["model"]["trust_remote_code"])
    set_seed(ctx.seed)  # dare drops weights at random
    base = base_model_path(params, inputs)
    tokenizer = AutoTokenizer.from_pretrained(str(dirs[0]) if (dirs[0] / "tokenizer_config.json")
                                              .is_file() else base, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                 trust_remote_code=trust)
    names = [f"a{i}" for i in range(len(dirs))]
    model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], dirs[1:], strict=True):
        model.load_adapter(str(folder), adapter_name=name)
    combined = names[0]
    if len(dirs) > 1 or weights != [1.0]:
        kwargs: dict[str, Any] = {}
        if method in ("ties", "dare_ties", "dare_linear"):
            kwargs["density"] = float(params["density"])
        if method in ("ties", "dare_ties"):
            kwargs["majority_sign_method"] = params["majority_sign_method"]
        try:
            model.add_weighted_adapter(names, weights, "merged", combination_type=method,
                                       **kwargs)
        except ValueError as e:
            raise StageError(f"merge: peft cannot combine the adapters with {method!r} ({e}). "
                             "Adapters of different ranks need merge.method=cat or svd.") from e
        combined = "merged"
    model.set_adapter(combined)
    model.eval()
    probes = _probe_inputs(tokenizer)
    reference = _logits(model, probes)

    tmp = out_dir / "_adapter"
    model.save_pretrained(str(tmp), selected_adapters=[combined])
    saved = tmp / combined if (tmp / combined).is_dir() else tmp
    shutil.move(str(saved), str(out_dir / "adapter"))
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(out_dir / "adapter"))

    merged = model.merge_and_unload(adapter_names=[combined])
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(str(out_dir / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir / "model"))
    _check_chat_template(tokenizer, out_dir / "model")
    del model, merged
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir / "model"), dtype=torch.float32,
                                                    trust_remote_code=trust).eval()
    diff = _max_abs_diff(_logits(reloaded, probes), reference)
    parity = {"max_abs_logit_diff": diff, "tolerance": tol, "passed": diff <= tol,
              "probes": len(probes), "against": "base + combined adapter (peft), float32"}
    quant = params["quant_trained"]
    report = {
        "artifact": "model",
        "artifact_dir": "model",
        "method": method if combined == "merged" else "merge_and_unload",
        "adapters": [str(d) for d in dirs],
        "weights": weights,
        "density": params["density"] if method in ("ties", "dare_ties", "dare_linear")
        else None,
        "dtype": dtype,
        "base_model": base,
        "parity": parity,
        "note": NOTE_FULL if quant == "none" else f"{NOTE_FULL} {NOTE_QUANT.format(q=quant)}",
        "paths": {"model": "model", "adapter": "adapter"},
    }
    write_json(out_dir / REPORT_NAME, report)
    if not parity["passed"]:
        raise StageError(f"merge: the merged model's logits differ from base + adapters by "
                         f"{diff:.3g} (tolerance {tol:g}, dtype {dtype}). Use merge.dtype=float32.")
    ctx.logger.info("merge: %s of %d adapter(s) -> model/ (max logit diff %.2e)",
                    report["method"], len(dirs), diff)
    return report
