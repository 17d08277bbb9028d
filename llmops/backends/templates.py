"""The model's own chat template at run time: choosing it, the assistant-only loss mask, and
reading answers back in its syntax.

Training, eval and serving see a row only through ``llmops.data.chat.render`` (the tokenizer's
``apply_chat_template`` on the row with call arguments as objects) with the template
model.chat_template names (see ``llmops.config.templates``). ``training_tokens`` is what sft
trains on for a row, and the data stage's preview shows the same. The loss mask covers the
assistant turns, tool calls and end-of-turn token included:
- from the template's own ``{% generation %}`` marks (the tiny model's template has them),
- else from TRL's training variant of the template (``get_training_chat_template``), used only for
  the mask: the tokens are checked to be those of the model's own template,
- else by rendering: each assistant turn's text is what the template adds to the chat before it
  (with the generation prompt), up to its end-of-turn token; the tokens whose characters fall in
  those spans are masked in. Where the template renders a chat's prefix otherwise than the chat
  (Qwen3 drops the ``<think>`` block of earlier turns), each turn is found after the assistant
  header in the whole chat's render (``header_spans``).

An assistant message's reasoning (``reasoning_content``) is rendered by the template like the
rest; ``data.reasoning=context`` takes its rendered block out of the mask
(``without_reasoning_loss``), and ``check_reasoning`` refuses a template that drops it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmops.config.templates import (
    AUTO,
    TINY,
    is_path,
    reasoning_problem,
    renders_reasoning,
    template_text,
    trl_templates_dir,
)
from llmops.data.chat import render, template_messages, template_tools, training_text
from llmops.data.reasoning import has_reasoning
from llmops.errors import ConfigError, Problem, StageError
from llmops.scoring.parsers import (
    REASONING_MARKERS,
    ParsedAnswer,
    arguments_problem,
    parser_for,
    split_reasoning,
)

#: End-of-turn markers of the known template families (ChatML, Llama 3, Phi-3); generation stops
#: at them and the loss mask ends assistant spans there.
STOP_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>")

MASK_METHODS = ("generation_marks", "trl_training_template", "rendered")
_PYTHON_TAG = "<|python_tag|>"
#: A ``{% generation %}`` tag, trim marks allowed (transformers' and TRL's pattern).
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def use_template(tokenizer: Any, chat_template: str, stage: str) -> Any:
    """Sets the tokenizer's chat template to the one model.chat_template names and returns it.

    ``auto`` and ``chatml`` keep the tokenizer's own; a TRL family or a .jinja path replaces it.

    Raises:
        StageError: When the tokenizer ends up with no template.
    """
    if chat_template not in (AUTO, TINY):
        tokenizer.chat_template = template_text(chat_template, None)
    if not getattr(tokenizer, "chat_template", None):
        raise StageError(f"{stage}: the tokenizer has no chat template (model.chat_template="
                         f"{chat_template}). Set model.chat_template to a TRL family (e.g. "
                         "qwen2_5, llama3_1) or a .jinja path.")
    return tokenizer


def check_tools(tokenizer: Any, rows: Sequence[Mapping[str, Any]], chat_template: str,
                stage: str) -> None:
    """Refuses, before training, a template that cannot render the tools the rows carry.

    Raises:
        ConfigError: (exit 2) naming model.chat_template and the fix.
    """
    from trl.chat_template_utils import supports_tool_calling

    first = next((i for i, r in enumerate(rows) if r.get("tools")), None)
    if first is None or supports_tool_calling(tokenizer):
        return
    what = "a .jinja file" if is_path(chat_template) else repr(chat_template)
    raise ConfigError([Problem("model.chat_template", (
        f"{what} cannot render tool calls, but the {stage} rows have tools (train row "
        f"{first + 1}). Use a template that does, e.g. model.chat_template=qwen2_5 or llama3_1, "
        "or data without tools."))])


def check_reasoning(tokenizer: Any, rows: Sequence[Mapping[str, Any]], chat_template: str,
                    stage: str) -> None:
    """Refuses, before training, a template that cannot render the reasoning the rows carry
    (``llmops.config.templates.renders_reasoning``).

    Raises:
        ConfigError: (exit 2) naming model.chat_template, the templates that can, and the fix.
    """
    first = next((i for i, r in enumerate(rows) if has_reasoning(r)), None)
    if first is None or renders_reasoning(tokenizer.chat_template or ""):
        return
    what = "a .jinja file" if is_path(chat_template) else repr(chat_template)
    raise ConfigError([Problem("model.chat_template", reasoning_problem(
        what, f"{stage} train row {first + 1}"))])


def reasoning_spans(text: str, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Returns the characters of each reasoning block a rendered chat holds: from the family's
    opening marker (``<think>``; gpt-oss's analysis channel) through its closing marker and the
    blank after it, for each assistant message's ``reasoning_content`` found in the text (a trace
    the template leaves out has none), and every such marked block, empty ones included (only
    assistant tokens are masked in, so a block quoted in a user turn changes nothing)."""
    spans, pos = [], 0
    for m in messages:
        trace = (m.get("reasoning_content") or "").strip() if m.get("role") == "assistant" \
            else ""
        at = text.find(trace, pos) if trace else -1
        if at < 0:
            continue
        start, end = at, at + len(trace)
        for opening, closing in REASONING_MARKERS:
            o = text.rfind(opening, pos, at)
            if o >= 0 and not text[o + len(opening):at].strip():
                start = o
                c = text.find(closing, end)
                if c >= 0 and not text[end:c].strip():
                    end = c + len(closing)
                    while end < len(text) and text[end] in " \t\r\n":
                        end += 1
                break
        spans.append((start, end))
        pos = end
    for opening, closing in REASONING_MARKERS:  # empty blocks too (Qwen3 writes one per answer)
        spans += [m.span() for m in re.finditer(
            re.escape(opening) + r".*?" + re.escape(closing) + r"\s*", text, re.DOTALL)]
    return spans


def without_reasoning_loss(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any,
                           enc: dict[str, list[int]]) -> dict[str, list[int]]:
    """Returns the tokenized chat with its reasoning blocks out of the loss mask
    (``data.reasoning=context``): the tokens that start inside a ``reasoning_spans`` block.

    Raises:
        StageError: When the tokenizer cannot give character offsets of the rendered chat, or
            they tokenize otherwise than the chat.
    """
    text = render(tokenizer, messages, tools)
    try:
        again = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow tokenizer: no offsets
        again = None
    if again is None or list(again["input_ids"]) != list(enc["input_ids"]):
        raise StageError("sft: data.reasoning=context needs the rendered chat's character "
                         "offsets (a fast tokenizer that tokenizes the render as the template "
                         "does). Use data.reasoning=train or drop.")
    spans = reasoning_spans(text, template_messages(messages))
    mask = [int(on and not any(s <= start < e for s, e in spans))
            for on, (start, _) in zip(enc["assistant_masks"], again["offset_mapping"],
                                      strict=True)]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def has_generation_marks(template: str | dict[str, str] | None) -> bool:
    """Tells whether a chat template marks the assistant turns with {% generation %} (of a
    template with named variants, its ``default``).

    The test is transformers' own (``apply_chat_template`` refuses an assistant mask without it)
    and TRL's ``has_generation_markers``, kept here so that a stage that only renders (the data
    stage's preview) does not import TRL, which loads transformers' model stack (~3 CPU-s).
    """
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and _GENERATION_MARK.search(template) is not None


def mask_method(tokenizer: Any) -> tuple[str, str | None]:
    """Returns how the loss mask is computed for this tokenizer's template, and the template the
    mask is rendered with (None: the tokenizer's own)."""
    if has_generation_marks(tokenizer.chat_template):
        return "generation_marks", None
    from trl.chat_template_utils import get_training_chat_template

    try:
        training = get_training_chat_template(tokenizer)
    except ValueError:  # TRL has no training variant of this template
        training = None
    if training and has_generation_marks(training):
        return "trl_training_template", training
    return "rendered", None


def tokenize_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None,
                  method: tuple[str, str | None] | None = None) -> dict[str, list[int]]:
    """Tokenizes a chat through the tokenizer's own template with its assistant-only mask.

    Args:
        tokenizer: The tokenizer, its chat template set (``use_template``).
        messages: The row's OpenAI messages (call arguments as JSON text or objects: the
            template receives objects, ``llmops.data.chat``).
        tools: The row's tools (a list or its JSON text).
        method: ``mask_method(tokenizer)``, computed once per dataset; None computes it.

    Returns:
        {"input_ids", "assistant_masks"}: the ids the model's template gives, 1 on assistant
        tokens (tool calls and end-of-turn token included), 0 elsewhere.
    """
    kind, training = method or mask_method(tokenizer)
    msgs, tools = template_messages(messages), template_tools(tools)
    if kind == "rendered":
        return rendered_mask(tokenizer, msgs, tools)
    enc = render(tokenizer, msgs, tools, tokenize=True, return_dict=True,
                 return_assistant_tokens_mask=True, chat_template=training)
    out = {"input_ids": list(enc["input_ids"]), "assistant_masks": list(enc["assistant_masks"])}
    if training is not None:
        own = render(tokenizer, msgs, tools, tokenize=True, return_dict=True)
        if list(own["input_ids"]) != out["input_ids"]:  # the variant renders this row otherwise
            return rendered_mask(tokenizer, msgs, tools)
        out["assistant_masks"] = _trim(tokenizer, out["input_ids"], out["assistant_masks"])
    return out


def training_tokens(tokenizer: Any, row: Mapping[str, Any], method: tuple[str, str | None],
                    assistant_only: bool, reasoning: str = "train") -> dict[str, list[int]]:
    """Returns what sft trains on for a data-stage row, tokenized: a chat through the model's own
    template (``tokenize_chat``) with its assistant mask (every token when ``assistant_only`` is
    false), or a text row (continued pre-training) ending on eos, every token trained on.
    With ``reasoning="context"`` (data.reasoning) the rendered reasoning blocks are out of the
    loss (``without_reasoning_loss``); with ``train`` they are in it like the answer.

    The data stage's lengths (``llmops.data.lengths``) count these same tokens, and its preview
    shows them (``loss_segments``).
    """
    if "text" in row:
        ids = list(tokenizer(training_text(tokenizer, row["text"]))["input_ids"])
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    out = tokenize_chat(tokenizer, row["messages"], row.get("tools"), method)
    if not assistant_only:
        out["assistant_masks"] = [1] * len(out["input_ids"])
    if reasoning == "context":
        out = without_reasoning_loss(tokenizer, row["messages"], row.get("tools"), out)
    return out


def loss_segments(tokenizer: Any, ids: Sequence[int], mask: Sequence[int]
                  ) -> list[dict[str, Any]]:
    """Returns the tokens as text in runs: ``[{"text", "loss": bool}]``, one entry per run of
    tokens that carry loss (or do not), special tokens written out."""
    import itertools

    out = []
    for on, group in itertools.groupby(zip(ids, mask, strict=True), key=lambda p: bool(p[1])):
        text = tokenizer.decode([i for i, _ in group], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        out.append({"text": text, "loss": on})
    return out


def _trim(tokenizer: Any, ids: list[int], mask: list[int]) -> list[int]:
    """Unmasks the whitespace tokens at the edges of each masked run (TRL's training variants
    mark the newline after the assistant header and after the end-of-turn token too)."""
    mask = list(mask)
    blank = [not tokenizer.decode([i]).strip() for i in ids]
    for k in range(len(ids)):
        if mask[k] and blank[k] and (k == 0 or not mask[k - 1]):
            j = k
            while j < len(ids) and mask[j] and blank[j]:
                mask[j] = 0
                j += 1
    for k in range(len(ids) - 1, -1, -1):
        if mask[k] and blank[k] and (k == len(ids) - 1 or not mask[k + 1]):
            j = k
            while j >= 0 and mask[j] and blank[j]:
                mask[j] = 0
                j -= 1
    return mask


def end_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Returns the end-of-turn markers an assistant span ends at (eos and known turn ends)."""
    vocab = tokenizer.get_vocab()
    ends = [t for t in STOP_TOKENS if t in vocab]
    if tokenizer.eos_token and tokenizer.eos_token not in ends:
        ends.append(tokenizer.eos_token)
    return tuple(ends)


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> tuple[str, list[tuple[int, int]]]:
    """Renders a chat and returns (text, [(start, end)]): each assistant turn's characters, from
    where the generation prompt ends to its end-of-turn marker included.

    Raises:
        StageError: When the template renders a turn's prompt or a prefix of the chat otherwise
            than the whole chat (no mask can be cut out).
    """
    def text(msgs: list[dict[str, Any]], prompt: bool) -> str:
        return render(tokenizer, msgs, tools, add_generation_prompt=prompt)

    full = text(messages, False)
    ends = end_tokens(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt, upto = text(messages[:i], True), text(messages[: i + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            by_header = header_spans(tokenizer, messages, tools, full, ends)
            if by_header is not None:
                return full, by_header
            raise StageError(
                "sft: the chat template renders a chat's prefix differently from the chat itself "
                f"(assistant turn {i}), so no assistant-only loss mask can be cut out. Use a "
                "template with {% generation %} marks (model.chat_template=PATH.jinja) or "
                "train.assistant_only_loss=false.")
        turn = upto[len(prompt):]
        stop = min((turn.find(t) + len(t) for t in ends if t in turn), default=len(turn.rstrip()))
        spans.append((len(prompt), len(prompt) + stop))
    return full, spans


def header_spans(tokenizer: Any, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]] | None, full: str,
                 ends: tuple[str, ...]) -> list[tuple[int, int]] | None:
    """Returns each assistant turn's characters in the whole chat's render, found after the
    template's assistant header (what its generation prompt adds), up to the turn's end-of-turn
    marker; None unless the render holds one header per assistant message.

    For a template whose render of a chat's prefix differs from the chat's own: Qwen3's writes
    the last assistant turn with its ``<think>`` block and earlier ones without (their reasoning
    is not rendered, so not trained on: the data report counts it).
    """
    probe = [{"role": "user", "content": "x"}]
    opened = render(tokenizer, probe, tools, add_generation_prompt=True)
    plain = render(tokenizer, probe, tools)
    header = opened[len(plain):] if opened.startswith(plain) else ""
    n = sum(m.get("role") == "assistant" for m in messages)
    starts, at = [], full.find(header) if header.strip() else -1
    while at >= 0:
        starts.append(at + len(header))
        at = full.find(header, at + len(header))
    if not starts or len(starts) != n:
        return None
    spans = []
    for start in starts:
        found = [full.find(t, start) for t in ends]
        stop = min((f + len(t) for f, t in zip(found, ends, strict=True) if f >= 0),
                   default=len(full))
        spans.append((start, stop))
    return spans


def rendered_mask(tokenizer: Any, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None) -> dict[str, list[int]]:
    """Returns the ids of the rendered chat and a mask that is 1 on the tokens whose characters
    start inside an assistant span (``assistant_spans``)."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= start < e for s, e in spans) and end > start)
            for start, end in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def trl_may_know(template: Any) -> bool:
    """Tells, without importing TRL, whether TRL's ``add_response_schema`` may recognise this
    chat template: it recognises only the text of a template it ships (a file of
    ``trl/chat_templates/``), so any other template (a dict of named templates, the tiny model's,
    a user's own) is one it refuses."""
    return isinstance(template, str) and template in _trl_templates()


@functools.cache
def _trl_templates() -> frozenset[str]:
    """The texts of the chat templates TRL ships (none when TRL is not installed)."""
    folder = trl_templates_dir()
    if folder is None:
        return frozenset()
    return frozenset(p.read_text(encoding="utf-8") for p in folder.glob("*.jinja"))


def answer_parser(tokenizer: Any) -> Callable[[str], ParsedAnswer]:
    """Returns the parser of the answers a model writes through its tokenizer's template.

    Where TRL recognises the template (``add_response_schema``), its ``parse_response`` reads the
    calls; an answer it finds none in goes to the family's own parser
    (``llmops.scoring.parsers.parser_for``: hermes ``<tool_call>`` blocks, Llama 3.1 JSON calls,
    the tiny model's syntax), which also reports begun calls it cannot read. Both read the
    answer after its reasoning (``split_reasoning``: a ``<think>`` block is no answer). A call whose
    arguments are a JSON string (double-encoded) is the family parser's syntax error, never a
    call, whatever TRL's schema would decode.

    TRL is imported only for a template it may know (``trl_may_know``): its import loads
    ``datasets`` and more of transformers (~1 CPU-s), which an eval of another template (the tiny
    model's) never uses.
    """
    import copy

    family = parser_for(tokenizer.chat_template)

    def own(text: str) -> ParsedAnswer:
        return family(split_reasoning(text)[1])

    if not trl_may_know(tokenizer.chat_template):
        return own
    from trl.chat_template_utils import add_response_schema, parse_response

    reader = copy.copy(tokenizer)
    try:
        add_response_schema(reader)
    except ValueError:  # a template TRL does not know
        return own
    prefix = render(reader, [{"role": "user", "content": "x"}], tokenize=True,
                    add_generation_prompt=True, return_dict=True)["input_ids"]
    eos = reader.eos_token or ""

    def parse(text: str) -> ParsedAnswer:
        text = split_reasoning(text)[1]
        mine = own(text)
        if mine.double_encoded:  # TRL's schema may decode a string argument once more
            return mine
        body = text if not eos or text.endswith(eos) else text + eos
        ids = reader(body, add_special_tokens=False)["input_ids"]
        parsed = parse_response(reader, ids, prefix=list(prefix))
        calls = [c.get("function", c) for c in parsed.get("tool_calls") or []]
        if not calls or any(arguments_problem(c.get("arguments", {})) for c in calls):
            return mine
        text = (parsed.get("content") or "").replace(_PYTHON_TAG, "").strip()
        return ParsedAnswer([{"name": c["name"], "arguments": c.get("arguments", {})}
                             for c in calls], text, [])

    return parse
