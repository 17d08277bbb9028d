"""Stage "gguf": the merged model as GGUF file(s) through llama.cpp's own converter, with parity.

Conversion runs llama.cpp's convert_hf_to_gguf.py at the pinned llama-cpp-python version, unpacked
once by `python -m llmops.gguf_setup` (nothing is cloned or downloaded here). f16 and q8_0 come from
the converter; q4_k_m from llama-cpp-python's llama_model_quantize on the f16 file. The tiny model's
self-trained BPE vocabulary is unknown to the converter's pre-tokenizer table, so the pre-tokenizer
the base stage declared (base_report.json tokenizer.gguf_pre_tokenizer, "gpt-2") is passed on.

Parity, per file -> gguf_report.json:
- tokenizer: the GGUF tokenizes a probe set (held-out prompts, answers, awkward strings, and
  conversations with tools, a call, its result and an answer as the model's own template renders
  them: Qwen2.5's <tool_call> blocks, Llama 3.1's JSON calls; answers with reasoning where the
  template renders it: Qwen3's <think> blocks) exactly as the HF tokenizer does, special tokens
  and BOS included;
- chat template: the GGUF carries the training chat template byte for byte;
- greedy answers on held-out prompts vs the merged HF model (agreement rate; f16 should match).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmops.compiler.builders.gguf import GgufParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError

REPORT_NAME = report_name("gguf")
EXTRA_PROBES = (
    "Hello, world!  Two  spaces,\ttabs\nand new lines.\n\n",
    "Numbers 3 33 333 3333 2025-03-14 and 3.14159",
    "Unicode: café, naïve, 東京, emoji 🦙🚀",
    '{"tool": "create_task", "args": {"title": "buy milk", "due": "2025-03-14"}}',
    "<|im_start|>user\nhi<|im_end|>\n",
    '<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk"}}\n</tool_call>',
    '{"name": "create_task", "parameters": {"title": "buy milk", "due": "2025-03-14"}}',
)
#: Runs llama.cpp's converter with its own gguf-py first on sys.path; argv[1] = converter folder,
#: argv[2] = pre-tokenizer to declare ("" = let the converter identify it by hash), rest = its args.
_WRAPPER = """
import runpy, sys
root, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [root, root + "/gguf-py"]
if pre:
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [root + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _overlay(merged: Path, work: Path) -> Path:
    """Returns a folder of links to the merged model whose tokenizer_config states add_bos_token.

    A tokenizer without a BOS token (the tiny one) must not get llama.cpp's default BOS prepended.
    """
    config = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    if config.get("bos_token") is not None or "add_bos_token" in config:
        return merged
    work.mkdir(parents=True, exist_ok=True)
    for f in merged.iterdir():
        if f.name != "tokenizer_config.json":
            (work / f.name).symlink_to(f.resolve())
    config["add_bos_token"] = False
    (work / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return work


def convert(model_dir: Path, outfile: Path, outtype: str, pre_tokenizer: str | None,
            logger: Any) -> float:
    """Runs llama.cpp's convert_hf_to_gguf.py (f16 or q8_0); returns the seconds it took.

    Raises:
        StageError: If the converter is not set up or fails.
    """
    from llmops.serving.converter import require_converter

    root = require_converter()
    cmd = [sys.executable, "-c", _WRAPPER, str(root), pre_tokenizer or "", str(model_dir),
           "--outfile", str(outfile), "--outtype", outtype]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise StageError(f"gguf: llama.cpp's converter failed on {model_dir} ({outtype}):\n{tail}\n"
                         "If the architecture is new, update llmops[gguf] and rerun "
                         "python -m llmops.gguf_setup --force.")
    logger.info("gguf: converted %s -> %s in %.1fs", model_dir, outfile.name,
                time.perf_counter() - t0)
    return time.perf_counter() - t0


def quantize(src: Path, dst: Path, kind: str = "q4_k_m") -> float:
    """Quantizes a GGUF file with llama-cpp-python's llama_model_quantize; returns seconds."""
    import llama_cpp

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise StageError(f"gguf: llama_model_quantize {src.name} -> {kind} failed (code {rc}).")
    return time.perf_counter() - t0


def load_gguf(path: Path, n_ctx: int = 0, vocab_only: bool = False) -> Any:
    """Loads a GGUF with llama-cpp-python on the CPU, quietly (see serving.llama_cpp_runtime)."""
    from llmops.serving.llama_cpp_runtime import load_gguf as load

    return load(path, n_ctx=n_ctx, vocab_only=vocab_only)


def tokenizer_parity(llm: Any, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """Compares token ids of each text: HF tokenizer (its special tokens) vs the GGUF's."""
    mismatches = []
    for text in texts:
        hf = list(tokenizer(text)["input_ids"])
        gg = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        if hf != gg:
            mismatches.append({"text": text[:200], "hf": hf[:64], "gguf": gg[:64]})
    return {"probes": len(texts), "identical": len(texts) - len(mismatches),
            "passed": not mismatches, "mismatches": mismatches[:5]}


def template_probes(tokenizer: Any) -> list[str]:
    """Renders the sample tool conversations (llmops.serving.modelfile) through the tokenizer's
    chat template: the tool schemas, a call, its result and an answer in the template's syntax.
    A template that cannot render them (no tool role, ...) adds no probe. A template that renders
    reasoning adds the ``REASONING_CONVERSATIONS`` (its ``<think>`` blocks)."""
    from jinja2 import TemplateError

    from llmops.config.templates import renders_reasoning
    from llmops.data.chat import render
    from llmops.serving.modelfile import REASONING_CONVERSATIONS, SAMPLE_TOOLS, TOOL_CONVERSATIONS

    probes = []
    for conv in TOOL_CONVERSATIONS:
        try:
            probes.append(render(tokenizer, list(conv), SAMPLE_TOOLS))
        except (TemplateError, ValueError, TypeError):
            continue
    if renders_reasoning(tokenizer.chat_template or ""):
        probes += [render(tokenizer, list(conv), SAMPLE_TOOLS) for conv in REASONING_CONVERSATIONS]
    return probes


def gguf_chat_template(llm: Any) -> str | None:
    """Returns the chat template stored in the GGUF's metadata."""
    return (getattr(llm, "metadata", None) or {}).get("tokenizer.chat_template")


def greedy_gguf(llm: Any, prompts: list[str], max_new_tokens: int,
                stop_ids: list[int] | None = None) -> list[str]:
    """Greedy answers of the GGUF model, prompts tokenized by the GGUF itself.

    Generation ends at the GGUF's eos and at any of stop_ids (the end-of-turn tokens the HF side
    stops at, e.g. <|im_end|> where the GGUF's eos is another token).
    """
    from llama_cpp import StoppingCriteriaList

    stops = set(stop_ids or ())
    criteria = StoppingCriteriaList([lambda tokens, logits: int(tokens[-1]) in stops])
    answers = []
    for prompt in prompts:
        llm.reset()
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1,
                                    top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0,
                                    stopping_criteria=criteria if stops else None)
        answers.append(out["choices"][0]["text"].strip())  # as eval's HF answers are
    return answers


def _held_out(inputs: dict[str, Path], n: int) -> list[dict]:
    from llmops.files import read_jsonl

    data = inputs.get("data")
    for split in ("test.jsonl", "val.jsonl"):
        if data is not None and (Path(data) / split).is_file():
            rows = read_jsonl(Path(data) / split)
            if rows:
                return rows[:n]
    from llmops.stages.export import PROBES

    return [{"messages": [*p, {"role": "assistant", "content": ""}]} for p in PROBES][:n]


def _pre_tokenizer(inputs: dict[str, Path]) -> str | None:
    base = inputs.get("base")
    if base is None or not (Path(base) / report_name("base")).is_file():
        return None
    report = json.loads((Path(base) / report_name("base")).read_text(encoding="utf-8"))
    return (report.get("tokenizer") or {}).get("gguf_pre_tokenizer")


def run(params: GgufParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Converts export's merged model to each listed GGUF type and checks parity per file.

    Params read: model (trust_remote_code), quantization (subset of f16, q8_0, q4_k_m),
    parity_prompts, max_new_tokens. Inputs: "export" (merged/), "data" (held-out prompts),
    "base" for the tiny model (declared pre-tokenizer).

    Returns:
        {files: {quant: {path, size_mb, seconds, parity}}, pre_tokenizer, converter, ...}.
    """
    import importlib.metadata

    from llmops.backends.generation import (
        build_prompt,
        generate,
        load_model,
        render_answer,
        stop_token_ids,
    )
    from llmops.files import write_json
    from llmops.serving.converter import LLAMA_CPP_PYTHON_VERSION

    out_dir = Path(out_dir)
    quants = list(params["quantization"])  # checked by the schema; the plan lists >= 1
    merged = Path(inputs["export"]) / "merged"
    if not (merged / "config.json").is_file():
        raise StageError(f"gguf: no merged model in {merged.parent}. "
                         "Add 'merged' to deploy.formats.")
    pre = _pre_tokenizer(inputs)
    src = _overlay(merged, out_dir / ".hf")
    trust = bool(params["model"]["trust_remote_code"])
    t_conv: dict[str, float] = {}
    files: dict[str, Path] = {}
    for q in ("f16", "q8_0"):
        if q in quants or (q == "f16" and "q4_k_m" in quants):
            files[q] = out_dir / f"model-{q}.gguf"
            t_conv[q] = convert(src, files[q], q, pre, ctx.logger)
    if "q4_k_m" in quants:
        files["q4_k_m"] = out_dir / "model-q4_k_m.gguf"
        t_conv["q4_k_m"] = quantize(files["f16"], files["q4_k_m"])
        if "f16" not in quants:
            files.pop("f16").unlink()

    if src != merged:
        shutil.rmtree(src)  # links only; the store entry must not point into another entry
    rows = _held_out(inputs, int(params["parity_prompts"]))
    model, tokenizer = load_model(merged, full_model=merged, trust_remote_code=trust)
    prompts = [build_prompt(tokenizer, r["messages"], r.get("tools")) for r in rows]
    max_new = int(params["max_new_tokens"])
    hf_answers, _ = generate(model, tokenizer, rows, max_new_tokens=max_new, batch_size=1,
                             show_progress=False, desc="hf", threads=ctx.threads)
    del model
    answers_ref = [render_answer(tokenizer, r["messages"], r.get("tools")) for r in rows]
    tool_probes = template_probes(tokenizer)
    probes = [*prompts, *answers_ref, *tool_probes, *EXTRA_PROBES]
    template = getattr(tokenizer, "chat_template", None)

    report_files: dict[str, Any] = {}
    for q, path in files.items():
        t0 = time.perf_counter()
        llm = load_gguf(path, n_ctx=0)
        load_s = time.perf_counter() - t0
        tok = tokenizer_parity(llm, tokenizer, probes)
        stored = gguf_chat_template(llm)
        answers = greedy_gguf(llm, prompts, max_new, stop_token_ids(tokenizer))
        del llm
        agree = [a == b for a, b in zip(answers, hf_answers, strict=True)]
        report_files[q] = {
            "path": path.name,
            "size_mb": round(path.stat().st_size / 2**20, 3),
            "convert_seconds": round(t_conv[q], 2),
            "load_seconds": round(load_s, 2),
            "parity": {
                "tokenizer": tok,
                "chat_template": {"identical": stored == template, "present": stored is not None},
                "greedy": {"prompts": len(agree),
                           "agreement_rate": round(sum(agree) / len(agree), 4) if agree else None,
                           "max_new_tokens": max_new,
                           "examples": [{"hf": h, "gguf": g} for h, g in
                                        zip(hf_answers[:3], answers[:3], strict=False)]},
            },
        }
        if q == "q4_k_m":
            hidden = json.loads((merged / "config.json").read_text("utf-8")).get("hidden_size", 0)
            if hidden % 256:
                report_files[q]["note"] = (f"hidden_size {hidden} is not a multiple of 256: "
                                           "llama.cpp stores most tensors in fallback types "
                                           "(q5_0/q8_0) instead of Q4_K")
        if not tok["passed"] or stored != template:
            write_json(out_dir / REPORT_NAME, {"files": report_files, "passed": False})
            raise StageError(
                f"gguf: {path.name} does not match the HF model: tokenizer "
                f"{tok['identical']}/{tok['probes']} probes identical, chat template "
                f"{'identical' if stored == template else 'differs'}. "
                f"See {out_dir / REPORT_NAME}; a wrong pre-tokenizer ({pre!r}) is the usual cause."
            )
    greedy_f16 = (report_files.get("f16") or {}).get("parity", {}).get("greedy", {})
    report = {
        "files": report_files,
        "quantization": quants,
        "pre_tokenizer": pre or "identified by the converter",
        "converter": f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python "
                     f"{LLAMA_CPP_PYTHON_VERSION}",
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "held_out_prompts": len(prompts),
        "tool_probes": len(tool_probes),
        "f16_greedy_agreement": greedy_f16.get("agreement_rate"),
        "passed": True,
    }
    write_json(out_dir / REPORT_NAME, report)
    return report
