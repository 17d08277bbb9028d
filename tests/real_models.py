"""Builds small models on real vocabularies and real chat templates, offline (no hub download).

The tokenizers come from llama.cpp's vocab-only GGUF files (unpacked by `llmops.gguf_setup`
beside the converter): Qwen2's 151,936 tokens (Qwen2.5 and Qwen3 share them) and Llama 3's 128,256.
The vocab files lack the family's added tokens beyond the first few (Qwen's ids 151646+ are
`[PAD...]`, Llama 3's 128004/128008/128010 are reserved), so each family's are put over those ids
as the real tokenizers have them, one token each: Qwen2.5's `<tool_call>` / `</tool_call>` (and
its vision and FIM tokens), Qwen3's `<tool_response>` / `</tool_response>` / `<think>` /
`</think>` besides, Llama 3.1's `<|finetune_right_pad_id|>`, `<|eom_id|>`, `<|python_tag|>`. The
chat templates are the real ones TRL ships (`trl/chat_templates/qwen2_5.jinja`, `qwen3.jinja`,
`llama3_1.jinja`). The weights are random and
small (hidden 64, 2 layers), so a folder is ~40 MB and a forward pass is cheap; everything else (the
`config.json`, the tokenizer files, the special tokens, the generation config) is what an ordinary
`save_pretrained` folder of that family holds, so the hub path of llmops runs on it unchanged.

Building a folder converts a GGUF vocab in Python (~15-30 s); `build_real_model` caches the result
in `cache_dir` keyed by family and this file's recipe version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Bump when the recipe below changes, so cached folders are rebuilt. 2: the families' added
#: tokens, the qwen3 family.
RECIPE = 2

#: Qwen2.5's added tokens past <|im_end|> (id 151646 on), as its tokenizer_config.json lists them:
#: (content, special). <tool_call> and the FIM tokens are not special (decoding keeps them).
_QWEN25 = (
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False))
_QWEN3 = (*_QWEN25, ("<tool_response>", False), ("</tool_response>", False), ("<think>", False),
          ("</think>", False))


@dataclass(frozen=True)
class Family:
    """What it takes to build one model family's small stand-in."""

    name: str
    vocab_file: str
    template: str  # a file under trl/chat_templates/
    architecture: str  # transformers config class name
    eos: str  # the instruct model's end-of-turn token
    pad: str
    bos: str | None
    tie_embeddings: bool
    added: dict[int, tuple[str, bool]]  # id -> (content, special), over the vocab's placeholders
    config: tuple[tuple[str, int], ...] = ()  # extra config keys (Qwen3's head_dim)


FAMILIES = {
    "qwen2": Family("qwen2", "ggml-vocab-qwen2.gguf", "qwen2_5.jinja", "Qwen2Config",
                    eos="<|im_end|>", pad="<|endoftext|>", bos=None, tie_embeddings=True,
                    added=dict(enumerate(_QWEN25, start=151646))),
    # Qwen3 has Qwen2's 151,936 tokens (llama.cpp's ggml-vocab-qwen35.gguf holds the same ones;
    # gguf_setup unpacks qwen2's) plus its four added tokens.
    "qwen3": Family("qwen3", "ggml-vocab-qwen2.gguf", "qwen3.jinja", "Qwen3Config",
                    eos="<|im_end|>", pad="<|endoftext|>", bos=None, tie_embeddings=True,
                    added=dict(enumerate(_QWEN3, start=151646)), config=(("head_dim", 16),)),
    "llama": Family("llama", "ggml-vocab-llama-bpe.gguf", "llama3_1.jinja", "LlamaConfig",
                    eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>",
                    tie_embeddings=True,
                    added={128004: ("<|finetune_right_pad_id|>", True),
                           128008: ("<|eom_id|>", True), 128010: ("<|python_tag|>", True)}),
}


def vocab_path(family: str) -> Path | None:
    """Returns the vocab GGUF of a family if `python -m llmops.gguf_setup` unpacked it."""
    from llmops.serving.converter import converter_dir

    path = converter_dir() / "models" / FAMILIES[family].vocab_file
    return path if path.is_file() else None


def trl_template(name: str) -> str:
    """Returns the text of one of TRL's shipped chat templates."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def _with_added_tokens(tok, added: dict[int, tuple[str, bool]], folder: Path):
    """Returns the tokenizer with the family's added tokens over the vocab's placeholder ids
    (renamed in tokenizer.json and tokenizer_config.json, then loaded again)."""
    from transformers import AutoTokenizer

    tok.save_pretrained(str(folder))
    data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
    renamed = {}
    for entry in data["added_tokens"]:
        if entry["id"] in added:
            renamed[entry["content"]] = added[entry["id"]][0]
            entry["content"], entry["special"] = added[entry["id"]]
    missing = set(added) - {e["id"] for e in data["added_tokens"]}
    if missing:
        raise ValueError(f"ids {sorted(missing)} are no added tokens of the vocab to rename")
    vocab = data["model"]["vocab"]
    for old, new in renamed.items():
        if old in vocab:
            vocab[new] = vocab.pop(old)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        if int(key) in added:
            entry["content"], entry["special"] = added[int(key)]
    config_path.write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    return AutoTokenizer.from_pretrained(str(folder))


def _vocab_tokenizer(fam: Family, cache_dir: Path):
    """Returns the tokenizer transformers converts from the family's vocab GGUF (~12 CPU-s),
    converted once per vocab file and kept in cache_dir (Qwen2 and Qwen3 share one vocab), saved
    and loaded back as _with_added_tokens does anyway."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    folder = cache_dir / f"vocab-{fam.vocab_file.removesuffix('.gguf')}-r{RECIPE}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "tokenizer.json").is_file():
            gguf = vocab_path(fam.name)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tmp = Path(tempfile.mkdtemp(prefix=".vocab-", dir=cache_dir))
            try:
                tok.save_pretrained(str(tmp))
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder))


def _build(fam: Family, dest: Path, hidden: int, layers: int, seed: int) -> None:
    """Writes one model folder (tokenizer, config, random weights) into dest."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = _vocab_tokenizer(fam, dest.parent)
    tok = _with_added_tokens(tok, fam.added, dest / ".tokenizer")
    shutil.rmtree(dest / ".tokenizer")
    tok.chat_template = trl_template(fam.template)
    tok.eos_token = fam.eos
    tok.pad_token = fam.pad if fam.pad in tok.get_vocab() else fam.eos
    if fam.bos is not None:
        tok.bos_token = fam.bos
    cfg_cls = getattr(transformers, fam.architecture)
    vocab = max(len(tok), max(tok.get_vocab().values()) + 1)
    config = cfg_cls(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=fam.tie_embeddings,
        bos_token_id=tok.bos_token_id if fam.bos else None,
        eos_token_id=tok.convert_tokens_to_ids(fam.eos),
        pad_token_id=tok.pad_token_id, **dict(fam.config),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    (dest / "llmops_test_model.json").write_text(json.dumps(
        {"family": fam.name, "recipe": RECIPE, "template": fam.template, "vocab": fam.vocab_file}))


def build_real_model(family: str, cache_dir: Path, hidden: int = 64, layers: int = 2,
                     seed: int = 0) -> Path:
    """Returns a saved HF folder of a small `family` model on its real vocabulary and template.

    Raises:
        FileNotFoundError: If the vocab GGUF is not unpacked (run `python -m llmops.gguf_setup`).
    """
    fam = FAMILIES[family]
    if vocab_path(family) is None:
        raise FileNotFoundError(f"{fam.vocab_file} is not set up; run: python -m llmops.gguf_setup")
    dest = Path(cache_dir) / f"{family}-h{hidden}-l{layers}-s{seed}-r{RECIPE}"
    if (dest / "llmops_test_model.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _publish(dest, lambda tmp: _build(fam, tmp, hidden, layers, seed))


def _publish(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Returns dest after `fill` wrote it in a temporary sibling folder that replaces it whole,
    so a build that fails or is interrupted leaves no half-written model."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        fill(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def peaked_model(src: Path, dest: Path, scale: float = 30.0) -> Path:
    """Returns dest, a copy of the random-weight model folder src whose logits are peaked (its
    embeddings times `scale`, tied to the head), saved once.

    Random weights give near-tied logits, so f16 rounding alone flips greedy picks; scaled
    embeddings make every greedy step decisive, so greedy agreement measures a conversion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if (dest / "llmops_test_model.json").is_file():
        return dest
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(scale)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        info = json.loads((Path(src) / "llmops_test_model.json").read_text("utf-8"))
        (tmp / "llmops_test_model.json").write_text(json.dumps({**info, "peaked": scale}))

    return _publish(dest, fill)
