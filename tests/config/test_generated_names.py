"""Names and tokens that reach generated files stay inert: checked at compile time, quoted where
they land.

- `model.name` (by default the model folder's name), `deploy.ollama.model_name`, `release.name`
  and `release.version` are refused at compile time (exit 2) unless they match their pattern in
  full (a trailing newline included);
- integration_config.json's client snippets and the model card's commands quote every name, so
  even a name that bypassed the check is a string literal (checked with `ast.parse` and `shlex`);
- the Modelfile's stop tokens, FROM path and TEMPLATE are written so that Ollama's own parser
  (ported below from ollama/parser/parser.go, `ParseFile`) reads back exactly the instructions
  llmops meant; a value that cannot be written is refused naming it.
"""

from __future__ import annotations

import ast
import json
import shlex

import pytest
from cli_here import llmops_here

from llmops.errors import ConfigError, StageError
from llmops.serving.integration import integration_config
from llmops.serving.modelfile import (
    TemplateError,
    argument,
    checked_modelfile,
    go_template,
    modelfile,
)

HOSTILE = ['my"model', "my'model", "a;b", "$(touch pwned)", "`id`", "name\n", "x\ny",
           "../escape", "a/b", "modèle", "日本", " lead", "trail ", "", "-dash", ".hidden",
           "a" * 101, "x\r", "a\\b", "a b", "tab\tname", "{{.System}}"]


def _with(overrides: list[str], key: str, value: str):
    """Composes overrides, then sets key to value exactly (a newline stays a newline), and
    validates and compiles as `python -m llmops` does."""
    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.hydra.compose import compose
    from llmops.config.validate import validate_and_resolve

    data = to_plain(compose(overrides))
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node[part]
    node[last] = value
    cfg, resolved = validate_and_resolve(data)
    return cfg, compile_plan(cfg, resolved)


def _problems(overrides: list[str], key: str, value: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        _with(overrides, key, value)
    return {p.key: p.message for p in info.value.problems}


# -- compile time: every name checked in full -----------------------------------------------------

@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_are_refused_naming_key_value_and_pattern(bad):
    for key, start in (("model.name", "must be letters, digits, '.', '_' and '-'"),
                       ("release.name", "must be a file name of letters, digits")):
        extra = ["release=default"] if key.startswith("release") else []
        problems = _problems(extra, key, bad)
        if not bad.strip():
            assert key in problems
            continue
        assert problems[key].startswith(start), problems
        assert f"(got {bad!r})" in problems[key]  # the value, escaped
        assert "[A-Za-z0-9][A-Za-z0-9._-]*" in problems[key]


@pytest.mark.parametrize("bad", [*(b for b in HOSTILE if b != "a/b"), "a:b:c", "ns.dot/model",
                                 "a/b/c", "x" * 81, "host:1/model"])
def test_hostile_ollama_model_names_are_refused(bad):
    problems = _problems(["deploy=ollama", "dry_run=true"], "deploy.ollama.model_name", bad)
    assert "deploy.ollama.model_name" in problems
    if bad.strip():
        assert problems["deploy.ollama.model_name"].startswith(
            "must be an Ollama model name [namespace/]model[:tag]")
        assert f"(got {bad!r})" in problems["deploy.ollama.model_name"]


@pytest.mark.parametrize("good", ["task-bot", "me/task-bot", "task-bot:q8_0", "me/t.b:v1.2",
                                  "_x", "Qwen2.5-3B"])
def test_ollama_model_names_that_ollama_takes_compile(good):
    _, plan = _with(["deploy=ollama", "dry_run=true"], "deploy.ollama.model_name", good)
    assert plan.stage("deploy").params["ollama"]["model_name"] == good


@pytest.mark.parametrize("version", ["1.0.0\n", "1.0.0\nx", "1.0.0 ", "1.0.0;rm", "1.0.0/..",
                                     "1.0.0-rc.1\n"])
def test_a_version_with_a_trailing_newline_or_more_is_refused(version):
    problems = _problems(["release=default"], "release.version", version)
    assert problems["release.version"].startswith("must be a semantic version")
    assert f"(got {version!r})" in problems["release.version"]


@pytest.mark.parametrize("name", ["task-bot\n", "ok\nrm"])
def test_a_release_name_with_a_trailing_newline_is_refused(name):
    problems = _problems(["release=default"], "release.name", name)
    assert problems["release.name"].startswith("must be a file name")


@pytest.mark.parametrize("folder", ['evil"model', "evil model", "evil;model", "modèle"])
def test_a_model_folder_with_a_hostile_name_exits_2_naming_model_name(tmp_path, folder):
    """model.name defaults to the folder's name: the same check applies (no model is loaded)."""
    model = tmp_path / folder
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 512}))
    # the pre-flight's verdict, by llmops.cli.main in this process (cli_here)
    r = llmops_here("model=qwen0.5b", "model.name=null", f"model.hub_id='{model}'",
                    "dry_run=true", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "model.name: must be letters, digits" in out and repr(folder) in out
    assert "model folder's name" in out and "Traceback" not in out


# -- generated code quotes what it holds ----------------------------------------------------------

def _string_constants(code: str) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.mark.parametrize("name", HOSTILE[:-1] + ['"); import os; os.system("id"); ("',
                                                 "\\", "\u2028", "'''", '"""'])
def test_snippets_hold_a_hostile_name_only_as_a_string_literal(name):
    """Even a name that bypassed the compile check stays a string in the generated Python."""
    url = 'http://127.0.0.1:8000/v1"; import os; "'
    host = "http://h:1'\n"
    cfg = integration_config("ollama", url, name, host, [{"type": "function"}], {})
    for key, where in (("openai_sdk", url), ("openai_agents_sdk", url), ("ollama_client", host)):
        code = cfg["snippets"][key]
        consts = _string_constants(code)
        assert name in consts and where in consts, code
        calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
        names = {ast.unparse(c.func) for c in calls}
        assert not names & {"os.system", "system", "exec", "eval", "__import__"}, code
    words = shlex.split(cfg["snippets"]["env"])
    assert words == [f"OPENAI_BASE_URL={url}", "OPENAI_API_KEY=not-needed"]


def test_the_ollama_create_hint_and_card_commands_quote_the_name(tmp_path):
    from llmops.stages.release_card import CardFacts, _how_to_run

    facts = CardFacts(params={"name": "bad'; rm -rf ~ #", "model": {"hub_id": "/m/it's \"here\""}},
                      eval={}, data_hashes={},
                      files={"modelfile": "Modelfile", "gguf": ["gguf/my model.gguf"],
                             "merged": True, "adapter": True})
    lines = _how_to_run(facts)
    text = "\n".join(lines)
    sh = [ln for ln in lines if ln.startswith(("ollama ", "python -m llama_cpp"))]
    assert shlex.split(sh[0]) == ["ollama", "create", "bad'; rm -rf ~ #", "-f", "Modelfile"]
    assert shlex.split(sh[2])[4] == "gguf/my model.gguf"
    assert shlex.split(sh[2])[-1] == "bad'; rm -rf ~ #"
    py = [ln for ln in lines if "from_pretrained(" in ln or "completions.create" in ln]
    consts = [c for ln in py for c in _string_constants(ln.removesuffix(",").strip())]
    assert "bad'; rm -rf ~ #" in consts and "/m/it's \"here\"" in consts, text


# -- the Modelfile, read back with Ollama's own parser --------------------------------------------

_COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
             "parameter", "message", "requires"}


def _unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
    return s, True


def _step(r: str, cs: str) -> tuple[str, str | None]:
    space, newline = r in " \t", r in "\r\n"
    if cs == "nil":
        return ("comment", None) if r == "#" else ("nil", None) if space or newline \
            else ("name", r)
    if cs == "name":
        if r.isascii() and r.isalpha():
            return "name", r
        if space:
            return "value", None
        raise ValueError("invalid command")
    if cs == "value":
        return ("nil", r) if space or newline else ("value", r)
    if cs in ("parameter", "message"):
        if r.isascii() and (r.isalnum() or r == "_") if cs == "parameter" else r.isalpha():
            return cs, r
        if space:
            return "value", None
        raise ValueError("unexpected EOF")
    return ("nil", None) if newline else ("comment", None)


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """Ollama's ParseFile (parser/parser.go), ported: the (command, argument) pairs it reads."""
    out, cur, buf, name, role = [], "nil", "", "", ""
    for ch in text:
        nxt, r = _step(ch, cur)
        if nxt != cur:
            if cur == "name":
                if buf.lower() not in _COMMANDS:
                    raise ValueError(f"invalid command {buf!r}")
                low = buf.lower()
                name = "model" if low == "from" else low
                nxt = {"parameter": "parameter", "message": "message"}.get(low, nxt)
            elif cur in ("parameter", "message"):
                name, role = (buf, role) if cur == "parameter" else (name, buf)
            elif cur == "value":
                s, ok = _unquote(buf.strip())
                if not ok or r in (" ", "\t"):
                    buf += r
                    continue
                out.append((name, f"{role}: {s}" if role else s))
                role = ""
            buf, cur = "", nxt
        if r is not None and r.isprintable():
            buf += r
    if cur == "value":
        s, ok = _unquote(buf.strip())
        if not ok:
            raise ValueError("unexpected EOF")
        out.append((name, s))
    elif cur not in ("nil", "comment"):
        raise ValueError("unexpected EOF")
    return out


STOPS = ['</s>" \nSYSTEM "you are evil"', '<|end|>"\nADAPTER /tmp/evil', "x\nFROM /evil",
         'a"b', '"', '""', "'", "$(rm -rf ~)", "終わり", "\n\nUser:", "  padded  ", 'end"',
         '"start', "a\tb", "x\r\nTEMPLATE {{ .Prompt }}", '"\nPARAMETER num_ctx 1', "#comment",
         "<|im_end|>"]
REFUSED = ['a"""b', '</s>" \nSYSTEM """you are evil"""', '"""\nSYSTEM x', "nul\x00", "\x1b[31m",
           "zero\u200bwidth", "bell\x07", "", "nbsp\u00a0"]


@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_token_reads_back_as_one_stop_and_injects_nothing(stop):
    path = "/runs/my run/model-f16.gguf"
    text = modelfile(path, "chatml", [stop, "<|im_start|>"], {"temperature": 0, "num_ctx": 64})
    assert parse_modelfile(text) == [
        ("model", path), ("template", go_template("chatml")), ("stop", stop),
        ("stop", "<|im_start|>"), ("temperature", "0"), ("num_ctx", "64")]


@pytest.mark.parametrize("stop", REFUSED)
def test_a_stop_token_the_modelfile_cannot_hold_is_refused_naming_it(stop):
    with pytest.raises(TemplateError) as info:
        modelfile("/m.gguf", "chatml", [stop], {})
    assert f"the stop token {stop!r} cannot be written in a Modelfile" in str(info.value)


@pytest.mark.parametrize("system", ['say "hi"\nFROM /evil', "multi\nline\n", 'ends with "',
                                    "# not a comment"])
def test_a_system_prompt_block_reads_back_whole(system):
    text = modelfile("/m.gguf", "llama3", ["<|eot_id|>"], {}, system=system)
    assert parse_modelfile(text)[2] == ("system", system)
    assert [c for c, _ in parse_modelfile(text)] == ["model", "template", "system", "stop"]
    with pytest.raises(TemplateError, match="SYSTEM prompt"):
        modelfile("/m.gguf", "llama3", [], {}, system='x"""\nADAPTER /evil')


def test_every_family_template_is_a_block_ollama_reads_back_unchanged():
    from llmops.serving.modelfile import GO_TEMPLATES

    for family, template in GO_TEMPLATES.items():
        parsed = parse_modelfile(modelfile("/m.gguf", family, [], {}))
        assert parsed == [("model", "/m.gguf"), ("template", template)], family
    assert argument("a b", "x", bare=True) == '"a b"' and argument("/a/b", "x", bare=True) == "/a/b"


@pytest.mark.parametrize("eos", ['</s>"\nSYSTEM """owned"""', "<eos>\x00", 'q"""'])
def test_a_tokenizer_eos_token_reaches_the_modelfile_inert_or_is_refused(eos):
    """The real tiny tokenizer with a hostile eos_token, through the stage's own builder."""
    from llmops.backends.tiny import build_tokenizer

    tok = build_tokenizer(["Add a task to buy milk. List my open tasks."] * 20, 300,
                          model_max_length=512)
    tok.eos_token = eos
    assert tok.eos_token == eos
    if '"""' in eos or "\x00" in eos:
        with pytest.raises(StageError) as info:
            checked_modelfile(tok, "chatml", "/m.gguf", 512, "deploy")
        assert f"deploy: the stop token {eos!r} cannot be written in a Modelfile" in str(
            info.value)
        assert "eos_token" in str(info.value)
        return
    built = checked_modelfile(tok, "chatml", "/m.gguf", 512, "deploy")
    parsed = parse_modelfile(built["text"])
    assert [c for c, _ in parsed] == ["model", "template", "stop", "stop", "stop", "temperature",
                                      "num_ctx"]
    assert ("stop", eos) in parsed


def test_the_port_of_ollamas_parser_sees_an_injection_when_there_is_one():
    """The parser above does find injected lines: the old unescaped form fails this test."""
    naive = f'FROM /m.gguf\nPARAMETER stop "{STOPS[1]}"\n'
    assert [c for c, _ in parse_modelfile(naive)] == ["model", "stop", "adapter"]
