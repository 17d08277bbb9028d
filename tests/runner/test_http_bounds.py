"""Every HTTP request llmops makes ends within limits.http_total_seconds in all, however slowly the
server trickles its answer (a client's timeout bounds each read only): the hub request of the
reachability pre-flight and deploy's requests (Ollama's version, the endpoint's health and smoke
chats). Real HTTP servers on 127.0.0.1 that send one byte every 0.2 s and stop by themselves.
(The monitor's probes: tests/monitor/test_monitor_inputs.py.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_deploy import _eval_dir, chat_tokenizer  # noqa: F401 - the fixture
from test_reachability import _llmops

from llmops.core.context import StageContext
from llmops.serving.deadline import DeadlineExceeded, within


class Trickle:
    """A server answering every GET and POST with 200 and a body of one byte every 0.2 s."""

    def __init__(self, seconds: float = 60) -> None:
        stop = self.stop = threading.Event()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                end = time.monotonic() + seconds
                try:
                    while time.monotonic() < end and not stop.is_set():
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Trickle:
        # polled every 0.05 s, so shutdown() returns at once (serve_forever's default: 0.5 s)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_within_returns_reraises_and_stops_waiting_at_the_bound():
    assert within(5, sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        within(5, lambda: 1 / 0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"limits.http_total_seconds=0.5 s"):
        within(0.5, time.sleep, 30)
    assert time.monotonic() - t0 < 5
    assert issubclass(DeadlineExceeded, TimeoutError)


def test_a_trickling_answer_to_a_get_is_cut_at_the_total():
    from llmops.stages.deploy import _get

    with Trickle() as server:
        t0 = time.monotonic()
        assert _get(server.url + "/v1/models", 2.0, 0.8) is None  # each read is quick
        took = time.monotonic() - t0
    assert 0.7 < took < 10, took


def test_deploy_ollama_against_a_trickling_server_ends_at_the_bound(tmp_path, chat_tokenizer,  # noqa: F811
                                                                    stage_params):
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
    params = stage_params("deploy", "deploy=ollama", "limits.http_total_seconds=0.8")
    assert params["http_total_seconds"] == 0.8
    params.update(serve_quantization="q8_0")
    ctx = StageContext(run_dir=tmp_path / "run", show_progress=False,
                       logger=logging.getLogger("test"))
    with Trickle() as server:
        params["ollama"].update(host=server.url, timeout_s=5.0)
        t0 = time.monotonic()
        report = deploy.run(params, {"gguf": gguf, "export": export,
                                     "eval": _eval_dir(tmp_path, True)}, out, ctx)
        took = time.monotonic() - t0
    assert report["ollama"]["created"] is False
    assert report["ollama"]["reason"] == f"no Ollama server answered at {server.url}"
    assert took < 30, took  # unbounded: 60 s of trickle
    assert (out / "Modelfile").is_file()


def test_the_reachability_hub_request_ends_at_limits_http_total_seconds(tmp_path):
    with Trickle() as hub:
        online = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}
        r, seconds = _llmops("model=qwen0.5b", "lora=r16", "limits.http_total_seconds=1",
                             cwd=tmp_path, **online)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"the hub at {hub.url} gave no complete answer within limits.http_total_seconds=1 s" \
        in r.stderr
    assert "Traceback" not in r.stderr and hub.requests == 1
    assert seconds < 60, seconds  # the trickle lasts 60 s per request
    assert not [p for p in Path(tmp_path).rglob("*") if p.is_file() and "hf" not in p.parts]
