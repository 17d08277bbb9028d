"""The memory plan of every stage that loads a model: pure arithmetic, no torch.

What each stage holds at its peak, on the device it runs its model on and on the host:

- sft: the training step (``llmops.planning.memory``).
- dpo: the training step on chosen + rejected (twice the rows) with full-vocabulary logits (TRL's
  DPO scores them whole); under LoRA the reference is the base with the adapter off (no copy),
  a full fine-tune holds a second, frozen copy.
- kto: as dpo (each row's answer and a mismatched one for the KL term: twice the rows; the
  reference a frozen adapter copy, or the weights for a full fine-tune).
- grpo: the policy's step on batch_size completions (prompt + max_completion_length tokens),
  the reference when beta > 0 (a frozen adapter copy, or the weights for a full fine-tune), and
  the KV cache of generating num_generations completions per prompt.
- orpo / simpo: the same step on chosen + rejected with full-vocabulary logits, and no reference
  model at all (reference-free: one model in memory even for a full fine-tune).
- eval_base / eval: the model (+ the adapter for eval) and the larger of the held-out loss and
  generation (``llmops.planning.eval_memory``).
- lm_eval: the model and the harness's logits (``eval_memory.lm_eval_parts``).
- merge / export: float32 base + adapter on the host, merged in place, a copy when saved in
  16-bit; the reload after saving comes after the first copy is freed.
- gguf: the larger of (the merged model in float32 answering the parity prompts) and (a GGUF file
  loaded by llama.cpp with its KV cache at the model's context length); llama.cpp's converter runs
  in a child process streaming tensors (lazy), well below either.
- deploy: the served GGUF (llama.cpp server or Ollama) with its KV cache at the model's context.

On a CPU the device is the host: device_gb == host_gb. Units: GB = GiB.
"""

# No `from __future__ import annotations`: a TypedDict made from annotation text compiles each
# into a ForwardRef (see llmops.compiler.builders).
from typing import Any

from typing_extensions import NotRequired, TypedDict

from llmops.planning import eval_memory, memory
from llmops.planning.memory import CPU_OVERHEAD_GB, GIB

#: Stages that load a model, in the order a plan runs them.
STAGES = ("sft", "dpo", "orpo", "simpo", "kto", "grpo", "merge", "eval_base", "lm_eval", "eval",
          "export",
          "gguf", "deploy")
#: Stages that hold their model on the host whatever the hardware (merge and export in float32
#: on the CPU; llama.cpp conversion, parity and serving with n_gpu_layers=0).
HOST_STAGES = ("merge", "export", "gguf", "deploy")
#: Bytes per parameter of a GGUF file by quantization (f16; q8_0: 34 bytes per 32; q4_k_m mixes
#: Q4_K and Q6_K: ~4.9 bits).
GGUF_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.61}
#: The GGUF types llmops writes, in one place: the schema's deploy.gguf type and the gguf stage's
#: check take them from here.
GGUF_TYPES = tuple(GGUF_BYTES)
#: The option listing the GGUF files to write (of GGUF_TYPES; the first one is served): the rules'
#: messages and the fixes name it by this, and read and set it through gguf_types/writing_gguf.
GGUF_KEY = "deploy.gguf.quantization"
#: llama.cpp's compute buffer holds one micro-batch of logits (n_ubatch 512) in fp32.
LLAMA_UBATCH = 512
#: The stage process of a run before it loads its model (torch, transformers, peft and trl were
#: imported by the stages before it, in one process): measured RSS here
#: (benchmarks/stage_memory.py, the tiny chain).
LOADER_OVERHEAD_GB = 0.65
#: The llama.cpp server process before its model and vocabulary (llama-cpp-python, its HTTP server
#: and llmops's chat handler): VmHWM 0.08 GB serving the tiny model's 512-token vocabulary
#: (llmops.serving.llama_cpp_runtime, /proc/PID/status after a smoke request). 0.30 before, from
#: RUSAGE_CHILDREN, which carries the parent's resident set at the fork into a child's peak.
LLAMA_OVERHEAD_GB = 0.08
#: llama.cpp's logits buffers of one micro-batch (compute graph output, output buffer, the
#: sampler's copy and the graph's scratch), each LLAMA_UBATCH x vocab fp32: a 700-token prompt
#: raised the served 10M-parameter Qwen2 GGUF (151,936-token vocabulary) from 0.21 GB (a short
#: prompt) to 1.31 GB, 3.8 such buffers.
LLAMA_LOGIT_COPIES = 4
#: A fast tokenizer's resident bytes per vocabulary entry (as llmops.planning.eval_memory counts).
TOKENIZER_BYTES_PER_TOKEN = 600.0


class LmEvalKnobs(TypedDict):
    """eval.lm_eval.*: the harness tasks and their batch."""

    tasks: list[str]
    limit: int | None
    num_fewshot: int | None
    batch_size: int


class EvalKnobs(TypedDict):
    """eval.*, gates and auto left out: what the eval stages' memory plan reads."""

    enabled: bool
    max_new_tokens: int
    batch_size: int
    token_budget: int
    logits_mb: float
    limit: int | None
    enforce: bool
    confidence: float
    worst_examples: int
    lm_eval: LmEvalKnobs


class DpoKnobs(TypedDict):
    batch_size: int | None
    """train.dpo.batch_size (None: train's)."""


class MergeKnobs(TypedDict):
    dtype: str
    """merge.dtype."""


class ExportKnobs(TypedDict):
    merge_dtype: str
    """deploy.merge_dtype."""


class GgufKnobs(TypedDict):
    quantization: list[str]
    max_new_tokens: int


class DeployKnobs(TypedDict):
    serve_quantization: str
    """The first of deploy.gguf.quantization (f16 when none)."""


def gguf_types(inputs: "StageMemoryInputs") -> list[str]:
    """Returns the GGUF types the gguf stage writes (GGUF_KEY), from a stage's memory inputs."""
    return list(inputs["gguf"]["quantization"])


def writing_gguf(types: list[str]) -> tuple[str, dict[str, Any]]:
    """Returns the override that writes GGUF `types` and serves the first, and the change it
    makes to the memory inputs (the gguf and deploy stages' knobs)."""
    return (f"{GGUF_KEY}=[{','.join(types)}]",
            {"gguf": {"quantization": list(types)}, "deploy": {"serve_quantization": types[0]}})


class StageMemoryInputs(TypedDict):
    """What the model-loading stages were configured with, for their memory plans
    (``llmops.config.resolve.stage_inputs``)."""

    stages: list[str]
    """The planned model-loading stages, in plan order (sft, dpo, merge, eval_base, lm_eval,
    eval, export, gguf, deploy)."""
    max_length: int
    """data.max_length."""
    merged: bool
    """A merge stage is planned."""
    eval: EvalKnobs
    dpo: DpoKnobs
    orpo: NotRequired[DpoKnobs]
    """train.orpo.batch_size; only when orpo is planned (the other plans' fingerprints stay)."""
    simpo: NotRequired[DpoKnobs]
    """train.simpo.batch_size; only when simpo is planned."""
    kto: NotRequired[DpoKnobs]
    """train.kto.batch_size; only when kto is planned."""
    grpo: NotRequired[dict[str, Any]]
    """train.grpo's batch_size (completions), num_generations, max_completion_length, beta;
    only when grpo is planned."""
    merge: MergeKnobs
    export: ExportKnobs
    gguf: GgufKnobs
    deploy: DeployKnobs



def gguf_bytes(model: dict[str, Any], quant: str) -> float:
    """Returns the size of the model's GGUF file for one quantization."""
    return memory.param_groups(model)["total"] * GGUF_BYTES.get(quant, 2.0)


def kv_cache_bytes(model: dict[str, Any], tokens: int, bytes_per: float) -> float:
    """Returns the KV cache of `tokens` positions: keys and values of every layer."""
    kv = memory.linear_shapes(model)["k_proj"][1]
    return 2.0 * model["num_layers"] * tokens * kv * bytes_per


def _fp32(model: dict[str, Any]) -> float:
    return memory.param_groups(model)["total"] * 4.0


def _lora_bytes(model: dict[str, Any], lora: dict[str, Any] | None) -> float:
    return memory.lora_params(model, lora) * 4.0


def merge_parts(model: dict, lora: dict | None, dtype: str) -> dict[str, float]:
    """Returns the host bytes of a merge (merge stage, or export's merged format)."""
    copy = 0.0 if dtype == "float32" else memory.param_groups(model)["total"] * 2.0
    # The parity probes' logits, once: export on a 10M-parameter Qwen2 (151,936-token
    # vocabulary) rose 0.36 GB over its stage process's start, its float32 weights (0.04 GB) and
    # one copy of these logits (0.29 GB) (benchmarks/stage_memory.py, with the stage process
    # released between stages). Two copies over-planned export at 0.67-0.83.
    probes = 8 * 64 * model["vocab_size"] * 4
    return {"weights": _fp32(model), "lora": _lora_bytes(model, lora), "copy": copy,
            "logits": probes, "overhead": LOADER_OVERHEAD_GB * GIB}


def served_parts(model: dict, quant: str) -> dict[str, float]:
    """Returns the bytes of a GGUF served by llama.cpp at the model's context length."""
    ctx = int(model["context_length"])
    return {"weights": gguf_bytes(model, quant), "kv_cache": kv_cache_bytes(model, ctx, 2.0),
            "logits": LLAMA_LOGIT_COPIES * LLAMA_UBATCH * model["vocab_size"] * 4.0,
            # llama.cpp's vocabulary and the chat handler's HF tokenizer
            "tokenizer": 2 * model["vocab_size"] * TOKENIZER_BYTES_PER_TOKEN,
            "overhead": LLAMA_OVERHEAD_GB * GIB}


def deploy_parts(model: dict, quant: str) -> dict[str, float]:
    """Returns the deploy stage's peak: the llama.cpp server (or Ollama) holding the GGUF beside
    the stage's own process (its tokenizer and smoke client)."""
    # stage_process: the job's stage process (llmops.runner.child) that runs deploy holds what
    # the stages before it imported (torch, transformers): 0.65-0.67 GB measured beside the
    # tiny model's server (benchmarks/stage_memory.py).
    return {**served_parts(model, quant), "stage_process": LOADER_OVERHEAD_GB * GIB}


def gguf_parts(model: dict, gguf: dict[str, Any]) -> dict[str, float]:
    """Returns the gguf stage's peak: float32 parity generation, or the largest GGUF loaded."""
    hf = _fp32(model) + kv_cache_bytes(model, 2048 + int(gguf["max_new_tokens"]), 4.0) \
        + model["vocab_size"] * 4.0 * 2
    quants = list(gguf["quantization"]) or ["f16"]
    # The parity check loads each GGUF in this process: its weights, KV cache at the model's
    # context and the logits of one position (greedy decoding keeps only the last token's
    # logits; no server, no second tokenizer). A micro-batch of logits here (LLAMA_UBATCH rows,
    # as the server keeps) over-planned gguf at 0.74-0.76 on the Qwen2/Qwen3 vocabularies: the
    # stage rose 0.22 GB over its start there, 0.09 GB of it the HF tokenizer.
    ctx = int(model["context_length"])
    served = max(gguf_bytes(model, q) + kv_cache_bytes(model, ctx, 2.0)
                 + model["vocab_size"] * 4.0 for q in quants)
    # q4_k_m quantizes the f16 file: both mapped while it runs.
    if "q4_k_m" in quants:
        served = max(served, gguf_bytes(model, "f16") + gguf_bytes(model, "q4_k_m"))
    tokenizer = model["vocab_size"] * TOKENIZER_BYTES_PER_TOKEN
    if hf >= served:
        return {"weights": _fp32(model), "kv_cache": hf - _fp32(model), "gguf": 0.0,
                "tokenizer": tokenizer, "overhead": LOADER_OVERHEAD_GB * GIB}
    return {"weights": 0.0, "kv_cache": 0.0, "gguf": served, "tokenizer": tokenizer,
            "overhead": LOADER_OVERHEAD_GB * GIB}


def dpo_parts(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
              dpo: dict[str, Any], distributed: dict | None = None, kind: str = "dpo"
              ) -> tuple[dict[str, float], list[str], float]:
    """Returns a preference step's device parts, notes and host bytes per process: dpo's with
    its reference, orpo's and simpo's (``kind``) with none."""
    dtrain = {**train, "batch_size": 2 * int(dpo.get("batch_size") or train["batch_size"]),
              "fused_loss": False}
    parts, notes, _, host = memory.device_parts(model, lora, quant, dtrain, hardware, distributed)
    parts = dict(parts)
    if kind in ("orpo", "simpo"):
        notes.append(f"{kind}: reference-free, one model in memory; chosen and rejected in one "
                     f"batch (2 x train.{kind}.batch_size rows), full-vocabulary logits")
        return parts, notes, host
    if lora is None:
        parts["reference"] = parts["weights"]
        notes.append(f"{kind}: full fine-tune keeps a frozen reference copy of the weights")
    else:
        notes.append(f"{kind}: the reference is the base with the adapter disabled, or a "
                     "frozen copy of the starting adapter")
    if kind == "kto":
        notes.append("kto: each row's answer and a mismatched one for the KL term "
                     "(2 x train.kto.batch_size rows), full-vocabulary logits")
    else:
        notes.append("dpo: chosen and rejected in one batch (2 x train.dpo.batch_size rows), "
                     "full-vocabulary logits")
    return parts, notes, host


def grpo_parts(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
               grpo: dict[str, Any], distributed: dict | None = None
               ) -> tuple[dict[str, float], list[str], float]:
    """Returns the grpo step's device parts (policy, reference when beta > 0, generation KV
    cache), notes and host bytes per process."""
    length = int(train["max_length"]) + int(grpo["max_completion_length"])
    gtrain = {**train, "batch_size": int(grpo["batch_size"]), "max_length": length,
              "fused_loss": False}
    parts, notes, _, host = memory.device_parts(model, lora, quant, gtrain, hardware, distributed)
    parts = dict(parts)
    notes = list(notes)
    if float(grpo["beta"]) > 0:
        parts["reference"] = parts["weights"] if lora is None else _lora_bytes(model, lora)
        notes.append("grpo: beta > 0 keeps the SFT model as the reference (a frozen adapter "
                     "copy, or the weights for a full fine-tune)")
    else:
        notes.append("grpo: beta 0, no reference")
    bytes_per = 4.0 if train.get("precision") == "fp32" else 2.0
    parts["kv_cache"] = kv_cache_bytes(model, int(grpo["num_generations"]) * length, bytes_per)
    notes.append(f"grpo: KV cache of {grpo['num_generations']} completions of up to "
                 f"{grpo['max_completion_length']} tokens after the prompt")
    return parts, notes, host


def eval_parts(model: dict, quant: dict, eval: dict, hardware: dict, max_length: int,
               adapter: bool, lora: dict | None = None) -> tuple[dict[str, float], list[str]]:
    """Returns the eval stage's parts (``llmops.planning.eval_memory``, the estimate whose
    batching functions the eval backends call)."""
    return eval_memory.eval_parts(model, quant, eval, hardware, max_length, adapter, lora=lora)


def lm_eval_parts(model: dict, quant: dict, eval: dict, hardware: dict, max_length: int,
                  adapter: bool, lora: dict | None = None) -> tuple[dict[str, float], list[str]]:
    """Returns the lm_eval stage's parts (``eval_memory.lm_eval_parts`` on its stage params: the
    harness batch, max_gen_toks, logits_mb)."""
    params = {"batch_size": eval["lm_eval"]["batch_size"],
              "max_gen_toks": eval["max_new_tokens"], "logits_mb": eval["logits_mb"]}
    return eval_memory.lm_eval_parts(model, quant, params, hardware, max_length, adapter,
                                     lora=lora)


def stage_parts(stage: str, model: dict, lora: dict | None, quant: dict, train: dict,
                hardware: dict, inputs: dict[str, Any], distributed: dict | None = None
                ) -> tuple[dict[str, float], float, list[str]]:
    """Returns (the stage's parts in bytes, its host bytes, notes).

    The parts are where the stage runs its model: the device for sft, dpo, eval_base, eval and
    lm_eval; the host for merge, export, gguf and deploy (whose host bytes are their parts).

    Args:
        stage: One of STAGES.
        model, lora, quant, train, hardware, distributed: As for ``memory.estimate``.
        inputs: What the other stages were configured with (``stage_inputs`` of
            llmops.config.resolve): eval, lm_eval, dpo, merge, export, gguf, deploy, max_length,
            merged (whether eval reads a merged model).
    """
    cuda = hardware.get("device") == "cuda"
    base_host = CPU_OVERHEAD_GB * GIB
    if stage == "sft":
        parts, notes, _, host = memory.device_parts(model, lora, quant, train, hardware,
                                                    distributed)
        return dict(parts), (base_host + host if cuda else 0.0), list(notes)
    if stage == "grpo":
        parts, notes, host = grpo_parts(model, lora, quant, train, hardware, inputs["grpo"],
                                        distributed)
        return parts, (base_host + host if cuda else 0.0), notes
    if stage in ("dpo", "orpo", "simpo", "kto"):
        parts, notes, host = dpo_parts(model, lora, quant, train, hardware, inputs[stage],
                                       distributed, kind=stage)
        return parts, (base_host + host if cuda else 0.0), notes
    if stage in ("eval_base", "eval", "lm_eval"):
        adapter = stage != "eval_base" and lora is not None and not inputs.get("merged")
        fn = lm_eval_parts if stage == "lm_eval" else eval_parts
        evq = quant if cuda else {**quant, "type": "none"}  # quant applies on a GPU only
        parts, notes = fn(model, evq, inputs["eval"], hardware, int(inputs["max_length"]),
                          adapter, lora=lora)
        return dict(parts), (LOADER_OVERHEAD_GB * GIB if cuda else 0.0), list(notes)
    if stage == "merge":
        return merge_parts(model, lora, inputs["merge"]["dtype"]), 0.0, [
            "merge: float32 base + adapters on the host, merged in place"]
    if stage == "export":
        return merge_parts(model, lora, inputs["export"]["merge_dtype"]), 0.0, [
            "export: float32 merge on the host"]
    if stage == "gguf":
        return gguf_parts(model, inputs["gguf"]), 0.0, [
            "gguf: float32 parity generation, then each GGUF loaded by llama.cpp"]
    if stage == "deploy":
        return deploy_parts(model, inputs["deploy"]["serve_quantization"]), 0.0, [
            f"deploy: {inputs['deploy']['serve_quantization']} GGUF served with its KV cache "
            f"at {model['context_length']} tokens"]
    raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def stage_memory(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                 inputs: dict[str, Any], distributed: dict | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Returns each planned stage's peak: {stage: {device_gb, host_gb, parts_gb, on}}.

    ``on`` says where its parts sit ("device" or "host"). On a CPU the device is the host.
    """
    cuda = hardware.get("device") == "cuda"
    out = {}
    for stage in inputs["stages"]:
        parts, host, _ = stage_parts(stage, model, lora, quant, train, hardware, inputs,
                                     distributed)
        procs = int(distributed["nproc_per_node"]) if distributed else 1
        if not cuda and procs > 1 and stage in ("sft", "dpo", "orpo", "simpo", "kto", "grpo"):
            # The ranks of one node share its memory (gloo on a CPU): every rank holds its part.
            parts = {**parts, "other_ranks": sum(parts.values()) * (procs - 1)}
        total = sum(parts.values())
        on_host = stage in HOST_STAGES or not cuda
        out[stage] = {
            "device_gb": 0.0 if on_host and cuda else round(total / GIB, 2),
            "host_gb": round((total if on_host else host) / GIB, 2),
            "parts_gb": {k: round(v / GIB, 2) for k, v in parts.items()},
            "on": "host" if on_host else "device",
        }
    return out


def capacities(hardware: dict[str, Any]) -> tuple[float | None, float | None]:
    """Returns (usable device GB, usable host GB); None where unknown or not this machine's.

    The host is checked only when the plan is for this machine (hardware=auto or cpu: memory_gb
    is what this machine may use); a named GPU profile plans for another machine.
    """
    frac = memory.USABLE_FRACTION
    cuda = hardware.get("device") == "cuda"
    here = not cuda or hardware.get("name") == "auto"
    host_cap = hardware.get("memory_gb") if here else None
    host = float(host_cap) * frac if host_cap else None
    if cuda:
        dev = float(hardware["gpu_memory_gb"]) * frac if hardware.get("gpu_memory_gb") else None
        return dev, host
    return host, host


def fitting(stages: dict[str, dict[str, Any]], hardware: dict[str, Any]) -> dict[str, Any]:
    """Marks each stage fits / does not fit, and returns the summary.

    Returns:
        {"largest": the stage of the largest peak (device, then host), "fits": all fit,
         "over": [stages that do not fit, largest first], "usable_device_gb", "usable_host_gb"}.
    """
    dev, host = capacities(hardware)
    over = []
    for name, s in stages.items():
        ok = (dev is None or s["device_gb"] <= dev) and (host is None or s["host_gb"] <= host)
        s["fits"] = ok
        if not ok:
            over.append(name)
    cuda = hardware.get("device") == "cuda"
    key = (lambda n: (stages[n]["device_gb"], stages[n]["host_gb"])) if cuda else \
        (lambda n: stages[n]["host_gb"])
    largest = max(stages, key=key) if stages else None
    over.sort(key=key, reverse=True)
    return {"largest": largest, "fits": not over, "over": over,
            "usable_device_gb": round(dev, 2) if dev else None,
            "usable_host_gb": round(host, 2) if host else None}
