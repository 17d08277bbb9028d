"""Loads a model for evaluation and generates answers greedily in batches.

Heavy imports (torch, transformers, peft) stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmops.backends.templates import STOP_TOKENS
from llmops.data.chat import render
from llmops.errors import StageError

"""End-of-turn tokens generation stops at, besides the tokenizer's eos (when in the vocab)."""


def load_tokenizer(path: str | Path, trust_remote_code: bool = False,
                   chat_template: str | None = None) -> Any:
    """Loads a tokenizer set up for batched generation (left padding, a pad token).

    Args:
        path: Folder or hub id holding the tokenizer.
        trust_remote_code: Passed to AutoTokenizer.
        chat_template: model.chat_template; a TRL family or a .jinja path replaces the
            tokenizer's own template (``llmops.backends.templates.use_template``).

    Returns:
        The tokenizer.

    Raises:
        StageError: If the tokenizer has no chat template.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat_template is not None:
        from llmops.backends.templates import use_template

        use_template(tok, chat_template, "eval")
    if not getattr(tok, "chat_template", None):
        raise StageError(
            f"eval: tokenizer at {path} has no chat_template. "
            "Set model.chat_template or use a tokenizer that ships one."
        )
    return tok


def load_model(
    base: str | Path,
    adapter: str | Path | None = None,
    full_model: str | Path | None = None,
    quant: Mapping[str, Any] | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
) -> tuple[Any, Any]:
    """Loads a causal LM (optionally with a LoRA adapter, or a fully fine-tuned one) for evaluation.

    The tokenizer is taken from the adapter or full-model folder when it holds one (so a template
    set during training is used), else from the base. On CPU the weights are float32; with a quant
    config the base is loaded through bitsandbytes.

    Args:
        base: Base model folder or hub id.
        adapter: PEFT adapter folder to apply on top of the base.
        full_model: Folder of fully fine-tuned weights; replaces the base.
        quant: Quant params ({"type": "none"|"nf4"|"fp4"|"int8", ...}); None = full precision.
        device: "cpu" or "cuda".
        trust_remote_code: Passed to transformers.
        chat_template: model.chat_template (see ``load_tokenizer``).

    Returns:
        (model in eval mode, tokenizer).

    Raises:
        StageError: If a given folder is missing.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from llmops.backends.hf import quantization_config

    for label, path in (("adapter", adapter), ("full model", full_model)):
        if path is not None and not Path(path).is_dir():
            raise StageError(f"eval: {label} folder {path} does not exist. Rerun the sft stage.")
    weights = full_model if full_model is not None else base
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    qconfig = None if quant is None else quantization_config(dict(quant), "eval")
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(weights), **kwargs)
    if qconfig is None:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.eval()

    tok_dir = base
    for candidate in (adapter, full_model):
        if candidate is not None and (Path(candidate) / "tokenizer_config.json").is_file():
            tok_dir = candidate
    return model, load_tokenizer(tok_dir, trust_remote_code=trust_remote_code,
                                 chat_template=chat_template)


def build_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> str:
    """Renders the chat prompt for a row: every message but the last, plus the assistant header.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The row's OpenAI messages; the last one (the reference answer) is left out.
        tools: The row's ``tools`` (a list of function schemas or its JSON text); the template
            renders them (e.g. the tiny model's tools line), None or empty renders none.
    """
    return render(tokenizer, list(messages)[:-1], tools, add_generation_prompt=True)


def render_answer(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> str:
    """Returns the last message as the model would write it: what the chat template adds after
    ``build_prompt`` for the whole chat, up to its first stop token (calls in the model's syntax).
    """
    prompt = build_prompt(tokenizer, messages, tools)
    full = render(tokenizer, list(messages), tools)
    if not full.startswith(prompt):
        raise StageError("eval: the chat template renders a chat's prompt differently from the "
                         "chat itself, so its answers cannot be cut out. Use a template whose "
                         "generation prompt is the start of the assistant turn.")
    answer = full[len(prompt):]
    for token in (*STOP_TOKENS, tokenizer.eos_token or STOP_TOKENS[0]):
        answer = answer.split(token)[0]
    return answer.strip()


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Returns the token ids that end an answer: eos plus known end-of-turn tokens in the vocab."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for token in STOP_TOKENS:
        if token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 96,
    batch_size: int = 32,
    show_progress: bool = True,
    desc: str = "generate",
    threads: int | None = None,
    token_budget: int | None = None,
    oom_retries: list[dict[str, Any]] | None = None,
) -> tuple[list[str], list[str]]:
    """Generates one answer per chat row, greedily, in left-padded batches.

    Prompts are sorted by length so batches waste little padding; answers come back in row order.
    A batch holds at most ``batch_size`` rows and rows x (longest prompt + max_new_tokens) <=
    ``token_budget`` tokens, which bounds its KV cache; an out-of-memory batch is halved and
    retried (``llmops.backends.oom.run_batches``). Decoding keeps only the new tokens, up to the
    first stop token, without special tokens.

    Args:
        model: Causal LM in eval mode.
        tokenizer: Tokenizer with a chat template and left padding.
        rows: OpenAI chat rows; the prompt is messages[:-1] (the last message is the reference)
            with the row's ``tools``.
        max_new_tokens: Longest answer to generate.
        batch_size: Most prompts per batch (eval.batch_size).
        show_progress: Whether to draw a tqdm bar.
        desc: Label of the progress bar.
        threads: Torch CPU threads to generate on (a stage passes StageContext.threads); None
            leaves them as they are.
        token_budget: Most rows x (prompt + max_new_tokens) tokens per batch (eval.token_budget);
            None bounds by rows only.
        oom_retries: Each out-of-memory halving is appended here.

    Returns:
        (predictions, prompts), both in row order.
    """
    import torch
    from tqdm.auto import tqdm

    from llmops.backends.common import cpu_threads
    from llmops.backends.oom import run_batches

    prompts = [build_prompt(tokenizer, row["messages"], row.get("tools")) for row in rows]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    predictions: list[str] = [""] * len(prompts)

    def run(idx: list[int]) -> None:
        enc = tokenizer(
            [prompts[i] for i in idx],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=int(max_new_tokens),
            do_sample=False,
            num_beams=1,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        for i, seq in zip(idx, new_tokens, strict=True):
            cut = next((k for k, t in enumerate(seq) if t in stops), len(seq))
            predictions[i] = tokenizer.decode(seq[:cut], skip_special_tokens=True).strip()
        bar.update(len(idx))

    with (
        cpu_threads(threads),
        torch.inference_mode(),
        tqdm(total=len(prompts), desc=desc, disable=not show_progress, unit="row") as bar,
    ):
        run_batches("generation", [n + int(max_new_tokens) for n in lengths], int(batch_size),
                    token_budget, run, oom_retries)
    return predictions, prompts
