"""The monitor's inputs are bounded: a hostile log line, reply or endpoint ends as exit 2 (or a
failed probe) with the file and line or the bound named, never a traceback, a hang or a NaN in
monitor_report.json; the metrics endpoint binds loopback unless told otherwise.

Real files of the monitor stage (test_monitor's fixture, the stage run once for the module),
the monitor's command line as README writes it, run by its main() in this process (these tests are
about what it reads and says; test_monitor runs `python -m llmops.monitor` as a process), and real
HTTP servers on 127.0.0.1 (one answers 200 with bodies that are no chat completion, one trickles a
byte at a time); each server stops by itself.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_monitor import _fake_run, _log, stage_inputs  # noqa: F401 - the fixture

from llmops.errors import EXIT_CONFIG, EXIT_STAGE_FAILED, ConfigError


def _probes(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in
            (run_dir / "stages" / "monitor" / "probes.jsonl").read_text().splitlines()]


def _bad_log(tmp_path: Path, run_dir: Path, line: bytes, at: int = 3) -> Path:
    """A good log with `line` as line `at`."""
    good = _log(tmp_path / "good.jsonl", _probes(run_dir)[:5], False).read_bytes().splitlines()
    lines = good[:at - 1] + [line] + good[at - 1:]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _entry(latency: object = 0.1, message: object = None) -> dict:
    return {"request": {"messages": [{"role": "user", "content": "hi"}]},
            "response": {"choices": [{"message": message or {"content": "hello"}}]},
            "latency_s": latency}


def _monitor(*args: str) -> subprocess.CompletedProcess:
    """`python -m llmops.monitor ARGS`, run by its main() here: its exit code, stdout, stderr."""
    from llmops.monitor.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return subprocess.CompletedProcess(["python", "-m", "llmops.monitor", *args], code,
                                       out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def monitor_stage(stage_inputs, tmp_path_factory, stage_params):  # noqa: F811 - the fixture
    """The monitor stage's output (monitor.probes=60), built once for the module."""
    run = _fake_run(stage_inputs, tmp_path_factory.mktemp("monitor_stage"), stage_params)
    return (run / "stages" / "monitor").resolve()


@pytest.fixture
def run_dir(monitor_stage, tmp_path):
    """A run folder of its own whose stages/monitor links the module's stage output: the
    monitor writes its report in the run folder, never in the stage's."""
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "monitor").symlink_to(monitor_stage, target_is_directory=True)
    return run


HOSTILE_LINES = {
    "string latency": (json.dumps(_entry("0.5")).encode(), "latency_s must be a finite number"),
    "NaN latency": (json.dumps(_entry(float("nan"))).encode(), "NaN is not a JSON number"),
    "infinite latency": (json.dumps(_entry(float("inf"))).encode(),
                         "Infinity is not a JSON number"),
    "overflowing latency": (json.dumps(_entry(0.25)).encode().replace(b"0.25", b"1e400"),
                            "latency_s must be a finite number of seconds ≥ 0 (got inf)"),
    "negative latency": (json.dumps(_entry(-1)).encode(), "latency_s must be a finite number"),
    "boolean latency": (json.dumps(_entry(True)).encode(), "latency_s must be a finite number"),
    "non-UTF-8 byte": (json.dumps(_entry()).encode().replace(b"hello", b"hel\xfflo"),
                       "not UTF-8 (byte 0xff at column"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested 100000 deep, over "
                     "limits.json_depth=64"),
    "nesting just over": (json.dumps(_entry(message={"content": "x", "x": _nested(63)})).encode(),
                          "nested 68 deep, over limits.json_depth=64"),
    "not JSON": (b'{"request": ', "not JSON"),
    "message not an object": (json.dumps(_entry(message="hi")).encode(),
                              "not a logged request/response"),
    "messages of strings": (json.dumps({"request": {"messages": ["role"]}, "response": {
        "choices": [{"message": {"content": "x"}}]}}).encode(), "not a logged request/response"),
    "choices an object": (json.dumps({"request": {"messages": []}, "response": {
        "choices": {"0": 1}}}).encode(), "not a logged request/response"),
    "tool_calls a string": (json.dumps(_entry(message={"content": None, "tool_calls": "x"}))
                            .encode(), "not a logged request/response"),
}


@pytest.mark.parametrize("case", list(HOSTILE_LINES))
def test_a_hostile_log_line_exits_2_naming_file_and_line(run_dir, tmp_path, case):
    line, says = HOSTILE_LINES[case]
    log = _bad_log(tmp_path, run_dir, line, at=3)
    r = _monitor(str(run_dir), "--log", str(log), "--no-metrics")
    assert r.returncode == EXIT_CONFIG, r.stdout + r.stderr
    assert f"monitor: {log}:3: " in r.stderr and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (run_dir / "monitor_report.json").exists()  # never a report with NaN in it


def test_a_line_over_row_bytes_is_refused_without_reading_it_whole(run_dir, tmp_path,
                                                                   stage_inputs,  # noqa: F811
                                                                   stage_params):
    long = json.dumps(_entry(message={"content": "x" * 50_000})).encode()
    log = _bad_log(tmp_path, run_dir, long, at=2)
    r = _monitor(str(run_dir), "--log", str(log), "--no-metrics", "--row-bytes", "4096")
    assert r.returncode == EXIT_CONFIG
    assert f"{log}:2: the line is longer than limits.row_bytes=4096 bytes" in r.stderr
    # the run's own limits.row_bytes is the default
    small = tmp_path / "small"
    small.mkdir()
    from test_monitor import _run_stage

    _, out = _run_stage(stage_inputs, small, stage_params, "monitor.probes=60",
                        "limits.row_bytes=4096")
    assert json.loads((out / "baseline.json").read_text())["limits"]["row_bytes"] == 4096
    (small / "run" / "stages").mkdir(parents=True)
    (small / "run" / "stages" / "monitor").symlink_to(out, target_is_directory=True)
    r = _monitor(str(small / "run"), "--log", str(log), "--no-metrics")
    assert r.returncode == EXIT_CONFIG and "limits.row_bytes=4096" in r.stderr
    # a flag lifts it: the same log then scores
    r = _monitor(str(small / "run"), "--log", str(log), "--no-metrics", "--row-bytes", "100000")
    assert r.returncode == 0, r.stderr
    report = json.loads((small / "run" / "monitor_report.json").read_text())
    assert report["limits"]["row_bytes"] == 100000 and report["unreferenced"] == 2


def test_json_depth_comes_from_the_run_and_a_flag_overrides_it(run_dir, tmp_path):
    line = json.dumps(_entry(message={"content": "deep", "extra": [[[[[[[[1]]]]]]]]})).encode()
    log = _bad_log(tmp_path, run_dir, line)
    r = _monitor(str(run_dir), "--log", str(log), "--no-metrics", "--json-depth", "12")
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert f"{log}:3: nested 13 deep, over limits.json_depth=12" in r.stderr
    r = _monitor(str(run_dir), "--log", str(log), "--no-metrics")
    assert r.returncode == 0, r.stderr
    text = (run_dir / "monitor_report.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in monitor_report.json"))


# -- endpoints: replies that are no chat completion, and slow ones --------------------------------

class _Server:
    """A real HTTP server on 127.0.0.1 whose POST reply is chosen per test; stops by itself."""

    def __init__(self, reply) -> None:
        stop = self.stop_event = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply(self, stop)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # polled every 0.05 s, so shutdown() returns at once (serve_forever's default: 0.5 s)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        # never outlives the test by much; a daemon, cancelled on exit, so that no pending timer
        # keeps the process alive for its 90 s once the tests are done
        self.timer = threading.Timer(90, self.httpd.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _body(status: int, body: bytes, ctype: str = "application/json"):
    def reply(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return reply


def _trickle(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """200 and a long JSON body, one byte every 0.2 s, for at most 60 s."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    end = time.monotonic() + 60
    try:
        while time.monotonic() < end and not stop.is_set():
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass  # the client gave up: what the test wants


@pytest.mark.parametrize("reply", [
    _body(200, b"this is not JSON", "text/plain"), _body(200, b"this is not JSON"),
    _body(200, b"{}"), _body(200, b'{"choices": []}'), _body(200, b'{"choices": [{}]}'),
    _body(200, b'{"choices": [{"message": "hi"}]}'), _body(200, b"[1, 2]"),
    _body(200, b'{"choices": [{"message": {"content": "x", "tool_calls": 5}}]}'),
], ids=["text", "not-json", "empty", "no-choices", "no-message", "message-str", "array",
        "tool-calls-int"])
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # openai's, on tool_calls: 5
def test_a_200_reply_that_is_no_chat_completion_is_a_failed_probe(run_dir, reply):
    with _Server(reply) as server:
        r = _monitor(str(run_dir), "--endpoint", server.url, "--probes", "2", "--no-metrics")
    assert r.returncode == EXIT_STAGE_FAILED, r.stdout + r.stderr
    assert f"every probe to {server.url} failed (2 requests; last: " in r.stderr
    assert "Traceback" not in r.stderr


def test_a_trickling_endpoint_is_cut_at_http_total_seconds(run_dir):
    with _Server(_trickle) as server:
        t0 = time.monotonic()
        r = _monitor(str(run_dir), "--endpoint", server.url, "--probes", "2", "--no-metrics",
                     "--http-total-seconds", "0.8")
        took = time.monotonic() - t0
    assert r.returncode == EXIT_STAGE_FAILED, r.stdout + r.stderr
    assert "every probe to" in r.stderr and "(2 requests; last: " in r.stderr
    assert "no complete reply within limits.http_total_seconds=0.8 s" in r.stderr
    assert took < 40, took  # 2 x 0.8 s and the start-up; unbounded it waits 2 x 60 s


def test_duration_bounds_the_whole_probing_even_mid_request(run_dir):
    with _Server(_trickle) as server:
        t0 = time.monotonic()
        r = _monitor(str(run_dir), "--endpoint", server.url, "--duration", "1", "--no-metrics",
                     "--http-total-seconds", "500")
        took = time.monotonic() - t0
    assert r.returncode == EXIT_STAGE_FAILED, r.stdout + r.stderr
    assert "none sent within --duration" in r.stderr and "Traceback" not in r.stderr
    assert took < 40, took


# -- the metrics endpoint binds loopback unless told otherwise ------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com", "127.0.0.1.evil"])
def test_a_public_metrics_host_is_refused_without_opt_in(run_dir, tmp_path, host):
    log = _log(tmp_path / "good.jsonl", _probes(run_dir), False)
    r = _monitor(str(run_dir), "--log", str(log), "--metrics-host", host, "--metrics-port", "0")
    assert r.returncode == EXIT_CONFIG, r.stdout + r.stderr
    assert f"--metrics-host {host!r}" in r.stderr and "is not a loopback address" in r.stderr
    assert "the monitor's live figures" in r.stderr and "--allow-public-bind" in r.stderr
    assert not (run_dir / "monitor_report.json").exists()


def test_opting_in_binds_the_public_host(run_dir, tmp_path):
    log = _log(tmp_path / "good.jsonl", _probes(run_dir), False)
    r = _monitor(str(run_dir), "--log", str(log), "--metrics-host", "0.0.0.0", "--metrics-port",
                 "0", "--allow-public-bind")
    assert r.returncode == 0, r.stderr
    assert "metrics at http://0.0.0.0:" in r.stdout


@pytest.mark.parametrize("host", ["127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_opt_in(compose_plan, host):
    _, plan = compose_plan(["deploy=openai", "monitor=default", "dry_run=true",
                            f"monitor.metrics_host='{host}'", f"deploy.openai.host='{host}'"])
    assert plan.stage("monitor").params["metrics_host"] == host


PUBLIC_BINDS = [  # (key, its opt-in, what a public bind would expose)
    ("monitor.metrics_host", "monitor.allow_public_bind", "the monitor's live figures"),
    ("deploy.openai.host", "deploy.openai.allow_public_bind", "the served model"),
]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-box.lan"])
def test_a_public_bind_in_the_config_exits_2_unless_opted_in(compose_plan, host):
    """Both keys bind the host in one composition: each is refused on its own (validate lists
    every problem), and each opt-in lets its key through."""
    base = ["deploy=openai", "monitor=default", "dry_run=true",
            *[f"{key}='{host}'" for key, _, _ in PUBLIC_BINDS]]
    with pytest.raises(ConfigError) as info:
        compose_plan(base)
    problems = {p.key: p.message for p in info.value.problems}
    assert set(problems) == {key for key, _, _ in PUBLIC_BINDS}
    for key, opt_in, what in PUBLIC_BINDS:
        assert problems[key].startswith(f"{host!r}")
        assert f"is not a loopback address: it would expose {what}" in problems[key]
        assert f"set {opt_in}=true" in problems[key]
    _, plan = compose_plan([*base, *[f"{opt_in}=true" for _, opt_in, _ in PUBLIC_BINDS]])
    assert plan.stage("monitor").params["metrics_host"] == host
    assert plan.stage("deploy").params["openai"]["host"] == host
