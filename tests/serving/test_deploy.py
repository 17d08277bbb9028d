"""GGUF export, the Ollama Modelfile, the OpenAI-compatible endpoint and the deploy gate.

The Modelfile, config, gate and set-up tests need no llama.cpp. The GGUF conversion and serving
tests need the extra (pip install 'llmops[gguf]' && python -m llmops.gguf_setup) and skip with that
reason without it, unless LLMOPS_REQUIRE_GGUF=1 (set by CI), where they run and fail instead.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import tarfile
from pathlib import Path

import pytest
from fixtures_model import HAS_LLAMA_CPP, needs_gguf

from llmops.core.context import StageContext
from llmops.errors import ConfigError, StageError
from llmops.serving.modelfile import (
    SAMPLE_CONVERSATIONS,
    TOOL_CONVERSATIONS,
    check_template,
    go_template,
    modelfile,
    render_go,
    stop_tokens,
)

LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MORE_CONVERSATIONS = (
    [{"role": "user", "content": "Two\n\nparagraphs, trailing space "},
     {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "Ünïcödé 🦙 and {{ braces }}"}],
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A small byte-level BPE tokenizer carrying the training ChatML template (trained in ~1 s)."""
    from llmops.backends.tiny import build_tokenizer

    return build_tokenizer(["Add a task to buy milk. List my open tasks. Delete task 42."] * 20,
                           300, model_max_length=512)


def _hf_render(tokenizer):
    return lambda m, tools=None: tokenizer.apply_chat_template(
        m, tools=tools, tokenize=False, add_generation_prompt=True)


# -- Modelfile template == training template (no llama.cpp) ---------------------------------------

def test_modelfile_template_reproduces_the_training_chatml_prompt(chat_tokenizer):
    convs = [*SAMPLE_CONVERSATIONS, *MORE_CONVERSATIONS]
    check = check_template(_hf_render(chat_tokenizer), "chatml", conversations=convs)
    assert check["equivalent"] and check["conversations"] == len(convs)
    # The tiny template renders tools, so its tool conversations are compared too: byte for byte
    # but for the arguments' key order (Ollama holds them in a Go map, printed with sorted keys;
    # tests/serving/test_gotemplate_go.py checks that against Go itself).
    assert check["tools"] and check["tool_conversations"] == len(TOOL_CONVERSATIONS)
    assert check["mismatches"] == []
    assert [m["tools"] for m in check["json_formatting"]] == [True] * 2
    assert all('"arguments":{"due":"2025-03-14","title":"buy milk"}' in m["ollama"]
               for m in check["json_formatting"])
    # The very string the training template produces, rendered by Ollama's Go template.
    conv = SAMPLE_CONVERSATIONS[2]
    assert render_go(go_template("chatml"), conv) == _hf_render(chat_tokenizer)(conv)
    assert render_go(go_template("chatml"), conv).endswith(
        "<|im_start|>user\n  And task 43, please.\n<|im_end|>\n<|im_start|>assistant\n")


def test_modelfile_template_reproduces_a_llama3_prompt_without_its_bos():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tpl = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        LLAMA3_JINJA)
    bos = "<|begin_of_text|>"

    def render(messages, tools=None):
        return tpl.render(messages=messages, tools=tools, bos_token=bos,
                          add_generation_prompt=True)

    check = check_template(render, "llama3", bos_token=bos,
                           conversations=[*SAMPLE_CONVERSATIONS, *MORE_CONVERSATIONS])
    assert check["identical"], check["mismatches"]
    assert not check["tools"]  # this template ignores tools, so only plain chats are compared
    assert stop_tokens("llama3", LLAMA3_JINJA, "<|eot_id|>") == [
        "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def test_a_drifting_template_is_caught(chat_tokenizer):
    check = check_template(_hf_render(chat_tokenizer), "llama3")
    assert not check["equivalent"]
    assert len(check["mismatches"]) == len(SAMPLE_CONVERSATIONS) + len(TOOL_CONVERSATIONS)
    assert check["mismatches"][0]["training"].startswith("<|im_start|>user\n")


def test_modelfile_text_has_template_stops_and_parameters(chat_tokenizer):
    stops = stop_tokens("chatml", chat_tokenizer.chat_template, chat_tokenizer.eos_token)
    assert stops == ["<|im_end|>", "<|im_start|>"]
    text = modelfile("/models/model-f16.gguf", "chatml", stops,
                     {"temperature": 0, "num_ctx": 512})
    assert text.splitlines()[0] == "FROM /models/model-f16.gguf"
    assert f'TEMPLATE """{go_template("chatml")}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 512" in text


def test_go_renderer_trims_and_branches_like_text_template():
    tpl = ('{{- if eq .System "" }}none{{ else }}sys={{ .System }}{{ end -}}  \n '
           "{{ range .Messages -}}\n[{{ .Role }}]{{ end }}")
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    # A Modelfile SYSTEM reaches the template as Ollama passes it: .System and a system message.
    assert render_go(tpl, msgs, system="S") == "sys=S[system][user][assistant]"
    assert render_go(tpl, [], system="") == "none"


# -- config and plan (no llama.cpp) ---------------------------------------------------------------

def test_default_plan_has_no_gguf_or_deploy_stage(compose_plan):
    _, plan = compose_plan([])
    _, local = compose_plan(["deploy=local"])
    assert [s.name for s in plan.stages][-1] == "export"
    assert [s.fingerprint for s in plan.stages] == [s.fingerprint for s in local.stages]


def test_serving_targets_add_gguf_and_deploy_after_export(compose_plan):
    _, plan = compose_plan(["deploy=openai", "dry_run=true"])
    names = [s.name for s in plan.stages]
    assert names[-3:] == ["export", "gguf", "deploy"]
    deploy = plan.stages[-1]
    assert deploy.params["serve_quantization"] == "f16" and "eval" in deploy.needs
    _, ollama = compose_plan(["deploy=ollama", "dry_run=true"])
    assert ollama.stages[-1].params["ollama"]["host"] == "http://127.0.0.1:11434"
    _, local = compose_plan(["deploy.gguf.quantization=[q8_0]", "dry_run=true"])
    assert [s.name for s in local.stages][-2:] == ["export", "gguf"]


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["deploy=openai", "deploy.gguf.quantization=[]"], "deploy.gguf.quantization",
     "is empty, but deploy=openai serves a GGUF file. Set deploy.gguf.quantization=[f16] (or "
     "q8_0, q4_k_m)."),
    (["deploy=ollama", "deploy.formats=[adapter]"], "deploy.formats", "lacks 'merged'"),
    (["deploy=openai", "eval=none"], "deploy.allow_failed_gates", "eval is off"),
])
def test_serving_config_problems_name_the_key(compose_plan, overrides, key, message):
    with pytest.raises(ConfigError) as exc:
        compose_plan([*overrides, "dry_run=true"])
    assert any(p.key == key and message in p.message for p in exc.value.problems), exc.value


def test_eval_off_is_allowed_with_the_explicit_override(compose_plan):
    _, plan = compose_plan(["deploy=openai", "eval=none", "deploy.allow_failed_gates=true",
                            "dry_run=true"])
    assert "eval" not in plan.stages[-1].needs


# -- the gate (no llama.cpp) ----------------------------------------------------------------------

def _eval_dir(tmp_path: Path, passed: bool) -> Path:
    d = tmp_path / f"eval_{passed}"
    d.mkdir()
    gates = [{"name": "accuracy", "passed": passed}, {"name": "format", "passed": True}]
    (d / "eval_report.json").write_text(json.dumps({"passed": passed, "gates": gates}))
    return d


def test_deploy_refuses_failed_gates_unless_overridden(tmp_path):
    from llmops.stages.deploy import check_gates

    failed = {"eval": _eval_dir(tmp_path, False)}
    with pytest.raises(StageError, match=r"eval did not pass its gates \(accuracy\).*"
                                         r"deploy.allow_failed_gates=true"):
        check_gates({"allow_failed_gates": False, "eval_enforce": False}, failed)
    assert check_gates({"allow_failed_gates": True}, failed)["failed_gates"] == ["accuracy"]
    with pytest.raises(StageError, match="eval did not run"):
        check_gates({"allow_failed_gates": False}, {})
    passed = {"eval": _eval_dir(tmp_path, True)}
    assert check_gates({"allow_failed_gates": False}, passed)["eval_passed"] is True


# -- deploy=ollama without a server (no llama.cpp) ------------------------------------------------

def _unreachable_host() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def test_ollama_without_server_writes_modelfile_and_command(tmp_path, chat_tokenizer,
                                                           stage_params):
    host = _unreachable_host()
    report, out, gguf = _deploy_ollama(tmp_path, chat_tokenizer, host, stage_params,
                                       model_name=None)
    o = report["ollama"]
    assert o["created"] is False and host in o["reason"]
    assert o["command"] == f"ollama create llmops-tiny -f {tmp_path}/run/stages/deploy/Modelfile"
    # Equivalent: byte for byte but for the tool calls' argument key order (Go sorts map keys).
    assert o["template_check"]["equivalent"] and o["stop"] == ["<|im_end|>", "<|im_start|>"]
    assert all(m["tools"] for m in o["template_check"]["json_formatting"])
    text = (out / "Modelfile").read_text()
    assert text.startswith(f"FROM {(gguf / 'model-q8_0.gguf').resolve()}\n")
    integration = json.loads((out / "integration_config.json").read_text())
    assert integration["base_url"] == f"{host}/v1" and integration["model"] == "llmops-tiny"
    assert 'OpenAI(base_url="' in integration["snippets"]["openai_sdk"]
    assert "Client(host=" in integration["snippets"]["ollama_client"]


def _deploy_ollama(tmp_path: Path, chat_tokenizer, host: str, stage_params,
                   model_name: str | None = "my-agent") -> tuple[dict, Path, Path]:
    """Runs the deploy stage for target ollama on a stand-in GGUF; returns (report, out, gguf)."""
    from llmops.stages import deploy

    export = tmp_path / "export"
    chat_tokenizer.save_pretrained(str(export / "merged"))
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model-q8_0.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    (gguf / "gguf_report.json").write_text(json.dumps({
        "quantization": ["q8_0"], "files": {"q8_0": {"path": "model-q8_0.gguf", "parity": {}}}}))
    out = tmp_path / "out"
    out.mkdir()
    params = stage_params("deploy", "deploy=ollama")
    params.update(serve_quantization="q8_0", allow_failed_gates=False)
    params["ollama"].update(host=host, model_name=model_name, timeout_s=2.0)
    ctx = StageContext(run_dir=tmp_path / "run", show_progress=False,
                       logger=logging.getLogger("test"))
    report = deploy.run(params, {"gguf": gguf, "export": export,
                                 "eval": _eval_dir(tmp_path, True)}, out, ctx)
    return report, out, gguf


# -- set-up of the converter (no llama.cpp) -------------------------------------------------------

def _fake_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {
            "llama_cpp_python-0.0.0/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('hi')\n",
            "llama_cpp_python-0.0.0/vendor/llama.cpp/conversion/__init__.py": b"",
            "llama_cpp_python-0.0.0/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
            "llama_cpp_python-0.0.0/vendor/llama.cpp/ggml/src/big.c": b"int x;",
            "llama_cpp_python-0.0.0/llama_cpp/llama.py": b"",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_setup_unpacks_only_the_converter_and_stages_name_the_command(tmp_path, monkeypatch):
    from llmops import gguf_setup
    from llmops.serving import converter

    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "cache"))
    if HAS_LLAMA_CPP:
        with pytest.raises(StageError, match=r"not set up .* Run: python -m llmops.gguf_setup"):
            converter.require_converter("0.0.0")
    else:
        with pytest.raises(StageError, match=r"pip install 'llmops\[gguf\]'.*gguf_setup"):
            converter.require_converter("0.0.0")
    assert gguf_setup.main(["--sdist", str(_fake_sdist(tmp_path / "s.tar.gz")),
                            "--version", "0.0.0"]) == 0
    root = converter.converter_dir("0.0.0")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py",
                     "llmops_gguf_setup.json"]


# -- with the gguf extra --------------------------------------------------------------------------

@needs_gguf
@pytest.mark.slow
def test_gguf_f16_and_q8_conversion_of_the_tiny_model_matches_hf(chain_run):
    """The gguf stage of the session's chain run (deploy.gguf.quantization=[f16,q8_0] on the
    tuned tiny model): both files keep the HF tokenizer and chat template, f16 answers alike."""
    run = chain_run["run"]
    out = run / "stages" / "gguf"
    report = json.loads((run / "gguf_report.json").read_text())
    assert report["passed"] and report["pre_tokenizer"] == "gpt-2"
    assert set(report["files"]) == {"f16", "q8_0"}
    for q in ("f16", "q8_0"):
        parity = report["files"][q]["parity"]
        assert parity["tokenizer"]["passed"], parity["tokenizer"]["mismatches"]
        assert parity["chat_template"] == {"identical": True, "present": True}
        assert (out / f"model-{q}.gguf").is_file()
    assert report["f16_greedy_agreement"] == 1.0, report["files"]["f16"]["parity"]["greedy"]
    assert json.loads((out / "gguf_report.json").read_text())["passed"]


@needs_gguf
@pytest.mark.slow
def test_deploy_openai_end_to_end_answers_through_the_openai_client(chain_run):
    """`python -m llmops deploy=openai` as README writes it: train, gate, GGUF, serve, stop. The
    session's one run of the whole chain (deploy=openai monitor=default release=default, shared
    with the monitor and release tests) holds exactly this deploy stage."""
    run = chain_run["run"]
    report = json.loads((run / "deploy_report.json").read_text())
    assert report["gates"]["eval_passed"] is True
    assert report["openai"]["smoke_passed"] and report["openai"]["serving"] is False
    smoke = json.loads((run / "stages" / "deploy" / "smoke_test.json").read_text())
    assert smoke["passed"] and smoke["client"] == "openai" and smoke["prompts"] == 3
    # The demo's test rows carry tools: the smoke chats send them, and the tuned model's calls
    # come back as structured tool_calls (chat format llmops-tools), text otherwise.
    assert all(x["tools"] for x in smoke["results"])
    assert all(isinstance(x["answer"], str) or x["tool_calls"] for x in smoke["results"])
    assert any(x["tool_calls"] and x["finish_reason"] == "tool_calls" for x in smoke["results"])
    integration = json.loads((run / "stages" / "deploy" / "integration_config.json").read_text())
    assert integration["base_url"].startswith("http://127.0.0.1:")
    assert integration["tool_calls"]["chat_format"] == "llmops-tools"
    assert {t["function"]["name"] for t in integration["tools"]} >= {"create_task", "list_tasks"}
    gguf = json.loads((run / "gguf_report.json").read_text())
    assert gguf["f16_greedy_agreement"] == 1.0
    # The server is gone: nothing answers on its port any more.
    from llmops.stages.deploy import _get

    assert _get(integration["base_url"] + "/models", 1.0, 5.0) is None


# -- deploy=ollama against a stand-in Ollama server (Ollama itself cannot run here) ---------------

class _FakeOllama:
    """A real HTTP server on 127.0.0.1 speaking the few Ollama API routes deploy uses.

    It checks what a real server checks: the blob's bytes match its sha256 digest, and create names
    only blobs that were uploaded. Requests are recorded for the test to inspect.
    """

    def __init__(self, fail_create: bool = False):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path == "/api/version":
                    return self._reply(200, {"version": "0.0.0-test"})
                return self._reply(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                body = self._body()
                if self.path.startswith("/api/blobs/sha256:"):
                    digest = self.path.rsplit("/", 1)[1]
                    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                        return self._reply(400, {"error": "digest mismatch"})
                    fake.blobs[digest] = body
                    fake.requests.append(("POST", "/api/blobs", {"digest": digest}))
                    return self._reply(201, {})
                payload = json.loads(body or b"{}")
                fake.requests.append(("POST", self.path, payload))
                if self.path == "/api/create":
                    if fail_create:
                        return self._reply(500, {"error": "unsupported model format"})
                    missing = [d for d in payload["files"].values() if d not in fake.blobs]
                    if missing:
                        return self._reply(400, {"error": f"missing blob {missing}"})
                    return self._reply(200, {"status": "success"})
                if self.path == "/api/chat":
                    return self._reply(200, {
                        "model": payload["model"], "created_at": "2026-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": "create_task(...)"},
                        "done": True, "done_reason": "stop"})
                return self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_ollama_with_a_server_uploads_the_gguf_and_creates_the_model(tmp_path, chat_tokenizer,
                                                                    stage_params):
    import hashlib

    with _FakeOllama() as server:
        report, out, gguf = _deploy_ollama(tmp_path, chat_tokenizer, server.host, stage_params)
    o = report["ollama"]
    assert o["created"] is True and o["server_version"] == "0.0.0-test"
    assert o["smoke_answer"] == "create_task(...)"
    digest = "sha256:" + hashlib.sha256((gguf / "model-q8_0.gguf").read_bytes()).hexdigest()
    assert server.blobs[digest] == (gguf / "model-q8_0.gguf").read_bytes()
    create = next(p for m, path, p in server.requests if path == "/api/create")
    assert create["model"] == "my-agent" and create["files"] == {"model-q8_0.gguf": digest}
    # What Ollama is told is what the Modelfile says: the checked template, stops, parameters.
    assert create["template"] == go_template("chatml")
    assert create["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0,
                                    "num_ctx": 512}
    assert f'TEMPLATE """{create["template"]}"""' in (out / "Modelfile").read_text()
    chat = next(p for m, path, p in server.requests if path == "/api/chat")
    assert chat["model"] == "my-agent"
    integration = json.loads((out / "integration_config.json").read_text())
    assert integration["base_url"] == f"{server.host}/v1" and integration["model"] == "my-agent"


def test_ollama_server_errors_name_the_host_and_the_fix(tmp_path, chat_tokenizer, stage_params):
    with _FakeOllama(fail_create=True) as server:
        with pytest.raises(StageError, match=r"Ollama server at http://127\.0\.0\.1:\d+ failed "
                                             r"to create 'my-agent': unsupported model format"):
            _deploy_ollama(tmp_path, chat_tokenizer, server.host, stage_params)
