"""The gguf stage's params and builder: llama.cpp conversion of export's merged model. Pure.

The stage needs llmops[gguf] and ``python -m llmops.gguf_setup``. Its inputs are {"export"
(merged/), "data" (held-out prompts), "base" (tiny only: base_report.json's
tokenizer.gguf_pre_tokenizer)}; it writes the GGUF files and gguf_report.json. A plan whose
deploy.gguf.quantization is empty gets no gguf stage, so its fingerprints stay as they were.
"""

from typing_extensions import TypedDict

from llmops.compiler.builders.common import ModelParams
from llmops.compiler.inputs import PlanBuilder, StageInputs


class GgufParams(TypedDict):
    """Params of the gguf stage (deploy.gguf.quantization set, after export)."""

    model: ModelParams
    quantization: list[str]
    """GGUF types to write (f16, q8_0, q4_k_m)."""
    parity_prompts: int
    """Held-out prompts answered greedily by the HF model and each GGUF."""
    max_new_tokens: int
    """Greedy tokens per parity answer."""


def data_needs(b: PlanBuilder) -> list[str]:
    """Returns ["data"] when the plan has a data stage (held-out prompts), else []."""
    return ["data"] if b.has("data") else []


def add_gguf(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the gguf stage (deploy.gguf.quantization set, after export): llama.cpp conversion."""
    g = s.cfg.deploy.gguf
    if not g.planned or not b.has("export"):
        return
    params: GgufParams = {"model": s.model, "quantization": list(g.quantization),
                          "parity_prompts": g.parity_prompts, "max_new_tokens": g.max_new_tokens}
    b.add("gguf", params,
          ["export", *data_needs(b), *s.base],
          f"llama.cpp convert -> {', '.join(g.quantization)}; tokenizer, template and greedy "
          f"parity on {g.parity_prompts} held-out prompts")
