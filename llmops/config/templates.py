"""Compile-time checks of model.chat_template: the name or file, and whether it renders the tools
and the reasoning the data has.

``model.chat_template`` is one of: ``chatml`` (the tiny model's own template, its only value),
``auto`` (a hub model's tokenizer's own template), a TRL family name (a file of
``trl/chat_templates/``, e.g. ``qwen2_5``, ``llama3_1``), or a path to a ``.jinja`` file.

Pure: no torch, no transformers, no trl import (TRL's template folder is found with
``importlib.util.find_spec``); a template is rendered with jinja2 the way transformers renders it
(its ``{% generation %}`` tag, ``raise_exception``, ``tojson``). Each compile-time render is
bounded by ``limits.template_seconds`` (``llmops.data.limits.time_limit``, in process), so a
template that loops for hours fails the config at once, and ``dry_run`` keeps its speed. A
template that raises or does not compile is reported with its own message.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

TINY = "chatml"
AUTO = "auto"
_SENTINELS = ("tool_name_a8f3e2b1", "tool_arg_key_b9d4f5c2", "tool_arg_val_d6e7a9f3",
              "tool_content_c4f9a8e2")


def trl_templates_dir() -> Path | None:
    """Returns TRL's chat_templates folder without importing trl, or None if trl is missing."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return folder if folder.is_dir() else None


def family_names() -> list[str]:
    """Returns the TRL family names (its shipped templates, training variants left out)."""
    folder = trl_templates_dir()
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.jinja") if not p.stem.endswith("_training"))


def is_path(value: str) -> bool:
    """Tells whether a model.chat_template value names a file rather than a family."""
    return value.endswith((".jinja", ".j2")) or "/" in value or "\\" in value


def check_value(value: str) -> str:
    """Checks a model.chat_template value on its own (the schema's field validator).

    Returns:
        The value, unchanged.

    Raises:
        ValueError: For an unknown name or a missing file, naming what is allowed and the fix.
    """
    if value in (TINY, AUTO):
        return value
    if is_path(value):
        if not Path(value).expanduser().is_file():
            raise ValueError(f"template file {value!r} does not exist. Give the path of a .jinja "
                             "chat template, or model.chat_template=auto for the tokenizer's own.")
        return value
    names = family_names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{value!r} is not a known chat template.{hint} Allowed: auto, chatml "
                         f"(model=tiny), a .jinja path, or a TRL family: {', '.join(names)}.")
    return value


def template_text(value: str, hub_id: str | None) -> str | None:
    """Returns the Jinja text model.chat_template stands for, None where compile time cannot know
    it (``auto`` for a hub id that is not a local folder, or the tiny model's own)."""
    if value == TINY:
        return None
    if value == AUTO:
        return local_template(hub_id)
    if is_path(value):
        return Path(value).expanduser().read_text(encoding="utf-8")
    folder = trl_templates_dir()
    return (folder / f"{value}.jinja").read_text(encoding="utf-8") if folder else None


def local_template(hub_id: str | None) -> str | None:
    """Returns the chat template a local model folder ships (chat_template.jinja or
    tokenizer_config.json's), or None when hub_id is no local folder or it ships none."""
    if not hub_id or not Path(hub_id).is_dir():
        return None
    folder = Path(hub_id)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, RecursionError):
            return None
        return template if isinstance(template, str) else None
    return None


_PLAIN = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _environment():
    """Returns a jinja2 environment that renders as transformers' chat templates do."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' ``{% generation %}...{% endgeneration %}``: renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def _raise(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: "01 Jan 2026")
    return env


def render(template: str, messages: list[dict[str, Any]], seconds: float | None = None) -> str:
    """Renders a chat template as transformers does, in at most ``seconds``.

    Raises:
        jinja2.TemplateError: What the template raises (``raise_exception``, an undefined filter,
            a syntax error), TypeError for a wrong operation on a value.
        llmops.data.limits.TimeLimit: If the render takes longer than ``seconds``.
    """
    from llmops.data.limits import time_limit

    with time_limit(seconds):
        return _environment().from_string(template).render(
            messages=messages, tools=None, add_generation_prompt=False, bos_token="",
            eos_token="")


def render_error(template: str, messages: list[dict[str, Any]],
                 seconds: float | None = None) -> str | None:
    """Returns what a template raises on the messages (its own message), or None when it
    renders them. ``TimeLimit`` passes through."""
    import jinja2

    try:
        render(template, messages, seconds)
    except jinja2.TemplateSyntaxError as exc:
        return f"{exc.message} (line {exc.lineno})"
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
        return f"{type(exc).__name__}: {exc}" if not isinstance(
            exc, jinja2.TemplateError) else str(exc)
    return None


def renders_tools(template: str, seconds: float | None = None) -> bool | None:
    """Tells whether a chat template renders a tool-calling exchange (the call's name and
    arguments and the tool's answer all appear), as TRL's ``supports_tool_calling`` checks.

    Returns:
        True, or False (it leaves them out or raises on them).

    Raises:
        llmops.data.limits.TimeLimit: If the render takes longer than ``seconds``.
    """
    return _tools_render(template, seconds)[0]


def _tools_render(template: str, seconds: float | None) -> tuple[bool, str | None]:
    """Returns (whether the template renders tool calls, its error when it raised on them)."""
    import jinja2

    name, key, val, content = _SENTINELS
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": {key: val}}}]},
        {"role": "tool", "name": name, "content": content},
    ]
    try:
        text = render(template, messages, seconds)
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
        return False, str(exc) or type(exc).__name__
    return all(s in text for s in _SENTINELS), None


_REASONING = "reasoning_sentinel_e5a1c7d3"


def renders_reasoning(template: str, seconds: float | None = None) -> bool:
    """Tells whether a chat template renders an assistant message's reasoning: a chat whose last
    assistant turn carries ``reasoning_content`` (Qwen3's, DeepSeek's key) and ``thinking``
    (gpt-oss's), as ``llmops.data.chat.render`` hands it, comes out with the reasoning in it.

    Raises:
        llmops.data.limits.TimeLimit: If the render takes longer than ``seconds``.
    """
    import jinja2

    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "reasoning_content": _REASONING,
                 "thinking": _REASONING}]
    try:
        return _REASONING in render(template, messages, seconds)
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError):
        return False


def reasoning_families(seconds: float | None = None) -> list[str]:
    """Returns the TRL families whose template renders reasoning (``renders_reasoning``)."""
    folder = trl_templates_dir()
    return [n for n in family_names() if folder is not None and renders_reasoning(
        (folder / f"{n}.jinja").read_text(encoding="utf-8"), seconds)]


def reasoning_problem(what: str, where: str, seconds: float | None = None) -> str:
    """Returns the message of a template that cannot render the reasoning the data has."""
    can = reasoning_families(seconds)
    first = [n for n in ("qwen3", "gptoss") if n in can] or ["PATH.jinja"]
    return (f"{what} cannot render reasoning (an assistant message's reasoning_content), but "
            f"the data has reasoning ({where}). Use a template that does, e.g. "
            f"model.chat_template={' or '.join(first)} (its model's family; TRL's that do: "
            f"{', '.join(can) or 'none'}), or data.reasoning=drop to train without it.")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def data_has_tools(cfg: Any, limits: Any = None) -> str | None:
    """Tells whether the training data has tools, where compile time can know it (a line over
    ``limits.row_bytes`` or nested past ``limits.json_depth`` is skipped, not parsed).

    Returns:
        What shows it (e.g. "data=task_api", or "FILE line N"), or None when no tools are seen.
    """
    d = cfg.data
    if d.source == "task_api":
        return "data=task_api"
    if d.source not in ("files", "jsonl"):
        return None
    from llmops.data import formats

    paths = [d.path] if d.path else [s.path for s in d.sources]
    for spec in paths:
        try:
            files = formats.input_paths(spec, "data.path")
        except ValueError:
            continue  # rules/data.py reports it
        for file in files:
            found = _peek_tools(Path(file), limits)
            if found:
                return found
    return None


def _peek_tools(path: Path, limits: Any = None, rows: int = 50) -> str | None:
    """Returns "FILE line N" for the first of a JSONL file's first rows that has tools or calls."""
    return _peek(path, _row_has_tools, limits, rows)


def _row_has_tools(row: Any) -> bool:
    """Tells whether a raw row has tools or calls."""
    return isinstance(row, dict) and bool(row.get("tools") or any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("from") == "function_call")
        for m in row.get("messages") or row.get("conversations") or []))


def _peek(path: Path, found: Any, limits: Any = None, rows: int = 50) -> str | None:
    """Returns "FILE line N" for the first of a JSONL file's first rows that ``found`` holds
    true of (a line over ``limits.row_bytes`` is skipped, not held)."""
    from llmops.data import jsontext
    from llmops.data.convert import FormatError
    from llmops.data.readers import data_suffix, open_data

    if not path.is_file() or data_suffix(path) != ".jsonl":
        return None
    size = limits.row_bytes if limits is not None else 1 << 24
    try:
        f = open_data(path)
    except (OSError, FormatError):
        return None  # the data stage reports it
    with f:
        for number in range(1, rows + 1):
            try:
                line = f.readline(size + 1)
            except (OSError, EOFError):
                return None
            if not line:
                break
            if len(line) > size:  # an over-long line: skip to its end, never hold it
                while line and not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                continue
            try:
                row = jsontext.loads(line.decode("utf-8", "replace"),
                                     limits.json_depth if limits is not None else None)
            except json.JSONDecodeError:
                continue
            if found(row):
                return f"{path} line {number}"
    return None


def template_problems(cfg: Any) -> list[Any]:
    """Returns the cross-field problems of model.chat_template: a value that does not fit the
    model's source, and a template that cannot render the tools the data has."""
    from llmops.errors import Problem

    m = cfg.model
    value = m.chat_template
    if m.source == "tiny" and value != TINY:
        return [Problem("model.chat_template", f"{value!r}: the tiny model trains through its own "
                        f"template. Use model.chat_template={TINY}.")]
    if m.source != "tiny" and value == TINY:
        return [Problem("model.chat_template", f"'{TINY}' is the tiny model's own template. Use "
                        "model.chat_template=auto (the tokenizer's own), a TRL family such as "
                        "qwen2_5 or llama3_1, or a .jinja path.")]
    if cfg.train.method == "none" and not cfg.eval.enabled:
        return []
    try:
        text = template_text(value, m.hub_id)
    except (OSError, ValueError) as exc:  # not UTF-8, unreadable
        return [Problem("model.chat_template", f"{value!r} cannot be read ({type(exc).__name__}: "
                        f"{str(exc)[:200]}). Give a UTF-8 .jinja chat template.")]
    if text is None:
        return []
    from llmops.data.limits import TimeLimit

    seconds = cfg.limits.template_seconds
    try:
        error = render_error(text, _PLAIN, seconds)
        if error is not None:
            return [Problem("model.chat_template", f"{value!r} fails on a plain user/assistant "
                            f"chat: {error}. Fix the template, or use another (auto, a TRL "
                            "family such as qwen2_5, or a .jinja path).")]
        tools, raised = _tools_render(text, seconds)
        out = _reasoning_problems(cfg, value, text)
    except TimeLimit:
        return [Problem("model.chat_template", f"{value!r}: rendering a three-message chat took "
                        f"longer than limits.template_seconds={seconds:g} (a loop that runs too "
                        "long?). Fix the template, or raise limits.template_seconds.")]
    if tools:
        return out
    where = data_has_tools(cfg, cfg.limits)
    if where is None:
        return out
    with_tools = [n for n in ("llama3_1", "llama3_2", "qwen2_5") if n in family_names()]
    why = f" (it raised: {raised})" if raised else ""
    return [*out, Problem(
        "model.chat_template", f"{value!r} cannot render tool calls{why}, but the data has tools "
        f"({where}). Use a template that does, e.g. model.chat_template="
        f"{' or '.join(with_tools) or 'PATH.jinja'}, or data without tools.")]


def _reasoning_problems(cfg: Any, value: str, text: str) -> list[Any]:
    """Returns the problem of a template that cannot render the reasoning the data has (none
    with data.reasoning=drop)."""
    from llmops.errors import Problem

    if cfg.data.reasoning == "drop" or renders_reasoning(text, cfg.limits.template_seconds):
        return []
    where = data_has_reasoning(cfg, cfg.limits)
    if where is None:
        return []
    what = "a .jinja file" if is_path(value) else repr(value)
    return [Problem("model.chat_template",
                    reasoning_problem(what, where, cfg.limits.template_seconds))]


def data_has_reasoning(cfg: Any, limits: Any = None) -> str | None:
    """Tells whether the training data has reasoning, where compile time can know it: "FILE line
    N" of the first of a JSONL file's first rows with an assistant message's
    ``reasoning_content``/``reasoning``/``thinking``, a reasoning content part, or a leading
    ``<think>`` block; None when none is seen."""
    d = cfg.data
    if d.source not in ("files", "jsonl"):
        return None
    from llmops.data import formats

    for spec in [d.path] if d.path else [s.path for s in d.sources]:
        try:
            files = formats.input_paths(spec, "data.path")
        except ValueError:
            continue  # rules/data.py reports it
        for file in files:
            found = _peek(Path(file), _row_has_reasoning, limits)
            if found:
                return found
    return None


def _row_has_reasoning(row: Any) -> bool:
    """Tells whether a raw row (OpenAI or ShareGPT form) has an assistant message's reasoning."""
    if not isinstance(row, dict):
        return False
    for m in row.get("messages") or row.get("conversations") or []:
        if not isinstance(m, dict) or m.get("role", m.get("from")) not in ("assistant", "gpt"):
            continue
        if any(isinstance(m.get(k), str) and m[k].strip()
               for k in ("reasoning_content", "reasoning", "thinking")):
            return True
        content = m.get("content", m.get("value"))
        if isinstance(content, str) and content.lstrip().startswith("<think>"):
            return True
        if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") in ("reasoning", "thinking")
                for p in content):
            return True
    return False
