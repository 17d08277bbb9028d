"""Hostile data rows (issue 20): a tool schema's $ref, a catastrophic schema pattern, a row nested
100,000 deep, a line of hundreds of megabytes, compressed files, a glob of many files, a chat
template that raises or loops. Each ends as README's Guarantees say: one reject per bad row
(code, file, line), a bound named, nothing fetched or read outside the data, no traceback."""

from __future__ import annotations

import bz2
import gzip
import http.server
import json
import logging
import lzma
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llmops.data import jsontext, readers
from llmops.data.convert import FormatError
from llmops.data.limits import Limits

LIMITS = {"row_bytes": 16 << 20, "json_depth": 64, "pattern_seconds": 1.0,
          "template_seconds": 5.0, "glob_files_warn": 10_000}  # conf/config.yaml's defaults
SECRET = "hdata-secret-7f3a9c"


@pytest.fixture(autouse=True)
def _quiet():
    import datasets

    datasets.disable_progress_bars()


def _good(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"list my tasks, please ({i})"},
                         {"role": "assistant", "content": f"Here are your tasks, number {i}."}]}


def _call_row(parameters, arguments: str | dict, name: str = "add_task") -> dict:
    """A row that declares one tool with the given JSON Schema and calls it once."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"tools": [{"type": "function", "function": {"name": name,
                                                        "parameters": parameters}}],
            "messages": [
                {"role": "user", "content": "add milk"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": name, "arguments": args}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "assistant", "content": "Added."}]}


def _write(path: Path, bad: list[str], n_good: int = 20) -> Path:
    """Writes n_good good rows, then the bad rows' texts: bad row k is on line n_good + k + 1."""
    lines = [json.dumps(_good(i)) for i in range(n_good)] + bad
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_data(tmp_path: Path, path: Path | str, hub_id: str | None = None, num_proc=None,
              **limits) -> tuple[dict, Path]:
    from llmops.core.context import StageContext
    from llmops.stages import data

    out = tmp_path / "out"
    out.mkdir()
    source = {"path": str(path), "format": "auto", "weight": None, "samples": None,
              "columns": {}, "tags": {}}
    params = {"source": "files", "sources": [source], "format": "auto", "columns": {},
              "tags": {}, "hf_id": None, "hf_split": "train", "n_examples": 1200,
              "system_prompt": None, "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0,
              "dedup": True, "max_length": 512, "on_error": "keep",
              "on_unsupported": "fail", "num_proc": num_proc,
              "model": {"name": "x", "hub_id": hub_id, "trust_remote_code": False,
                        "chat_template": "auto"},
              "preview": {"rows": 0, "assistant_only_loss": True},
              "limits": {**LIMITS, **limits}}
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.hostile"))
    return data.run(params, {}, out, ctx), out


def _rejects(report: dict) -> list[tuple[int, str, str]]:
    return sorted((r["line"], r["code"], r["path"]) for r in report["rejects"])


def _written_lines(out: Path) -> set[int]:
    return {json.loads(x)["meta"]["line"] for name in ("train", "val", "test")
            for x in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()}


# ---- $ref in a tool's schema: resolved inside the schema only, nothing fetched or read ----


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        body = json.dumps({"type": "string", "description": SECRET}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_server():
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    # polled every 0.05 s, so shutdown() returns at once (serve_forever's default: 0.5 s)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    server.shutdown()
    server.server_close()


def _ref_schemas(url: str, secret: Path) -> dict[str, dict]:
    title = {"type": "object", "properties": {"title": {"$ref": "PLACEHOLDER"}}}

    def at(ref: str) -> dict:
        return json.loads(json.dumps(title).replace("PLACEHOLDER", ref))

    return {
        "http property": at(f"{url}/schema.json"),
        "http root": {"$ref": f"{url}/root.json"},
        "https": at("https://127.0.0.1:1/schema.json"),
        "http under $id": {"$id": f"{url}/base/", **at("other.json")},
        "file url": at(secret.as_uri()),
        "relative file": at(secret.name),
        "relative under file $id": {"$id": secret.parent.as_uri() + "/", **at(secret.name)},
        "missing pointer": {"definitions": {"s": {"type": "string"}},
                            **at("#/definitions/nope")},
        "self cycle": {"$ref": "#"},
        "two-step cycle": {"definitions": {"a": {"$ref": "#/definitions/b"},
                                           "b": {"$ref": "#/definitions/a"}},
                           "$ref": "#/definitions/a"},
        "$defs cycle": {"$defs": {"x": {"allOf": [{"$ref": "#/$defs/x"}]}},
                        "properties": {"title": {"$ref": "#/$defs/x"}}},
    }


def test_a_schema_ref_outside_the_schema_is_one_reject_and_nothing_is_fetched(
        tmp_path, recording_server, monkeypatch):
    url, requests = recording_server
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"type": "string", "description": SECRET}))
    monkeypatch.chdir(tmp_path)  # a relative reference would be read from here
    hostile = _ref_schemas(url, secret)
    local = {"definitions": {"s": {"type": "string"}},
             "type": "object", "properties": {"title": {"$ref": "#/definitions/s"}}}
    bad = [json.dumps(_call_row(schema, {"title": "milk"})) for schema in hostile.values()]
    bad += [json.dumps(_call_row(local, {"title": "milk"})),   # resolves inside: kept
            json.dumps(_call_row(local, {"title": 5})),        # resolves, then is checked
            json.dumps(_call_row({"$schema": f"{url}/meta.json", "type": "object"},
                                 {"title": "milk"}))]          # a $schema URL is not fetched
    data = _write(tmp_path / "rows.jsonl", bad)
    (tmp_path / "run").mkdir()
    report, out = _run_data(tmp_path / "run", data)
    n = len(hostile)
    path = "tools[0].function.parameters"
    assert _rejects(report) == sorted(
        [(21 + k, "tool_schema_ref", path) for k in range(n)]
        + [(22 + n, "argument_type", "messages[1].tool_calls[0].function.arguments.title")])
    assert {21 + n, 23 + n} <= _written_lines(out)
    assert requests == []  # the server was never contacted
    for reject in report["rejects"]:
        assert SECRET not in reject["message"] and "description" not in reject["message"]
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert written and not any(SECRET in p.read_text(errors="replace") for p in written)
    by_line = {r["line"]: r["message"] for r in report["rejects"]}
    assert by_line[21] == (f"tool 'add_task''s schema has $ref '{url}/schema.json', which does "
                           "not resolve inside the schema; references to other files or URLs "
                           "are never fetched. Inline the definition under $defs and point at "
                           "it with #/$defs/NAME.")
    assert by_line[21 + list(hostile).index("self cycle")] == (
        "tool 'add_task''s schema refers to itself in a cycle ($ref) or nests too deep to "
        "check. Break the cycle.")


def test_a_schema_ref_is_refused_in_evaluation_scoring_too(recording_server):
    from llmops.scoring.tools import _schema_valid

    url, requests = recording_server
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"$ref": f"{url}/x"}}}]
    assert _schema_valid([("t", {"a": 1})], tools) is False
    assert requests == []


# ---- a schema pattern that backtracks: bounded per row by limits.pattern_seconds ----

EVIL = "a" * 40 + "!"
PATTERN_SCHEMAS = {
    "pattern": {"type": "object", "properties": {"title": {"type": "string",
                                                           "pattern": "^(a|aa)+$"}}},
    "alternation star": {"type": "object", "properties": {"title": {"pattern": "^(a|a)*$"}}},
    "patternProperties": {"type": "object", "patternProperties": {"^(a|a)*$": {}}},
    "additionalProperties": {"type": "object", "additionalProperties": False,
                             "patternProperties": {"^(a|aa)+$": {}}},
    "propertyNames": {"type": "object", "propertyNames": {"pattern": "^(a|a)*$"}},
}


@pytest.mark.parametrize("kind", list(PATTERN_SCHEMAS))
def test_a_backtracking_pattern_is_one_reject_within_the_bound(kind):
    from llmops.data.canonical import Rejected
    from llmops.data.convert import Converter

    limits = Limits(**{**LIMITS, "pattern_seconds": 0.3})
    args = {"title": EVIL} if kind in ("pattern", "alternation star") else {EVIL: 1}
    row = Converter("openai", "x.jsonl", limits=limits)(
        {"__raw__": [json.dumps(_call_row(PATTERN_SCHEMAS[kind], args))], "__error__": [None],
         "__line__": [7]}, [0])
    from llmops.data.toolcheck import check_row

    canonical = {k: v[0] for k, v in row.items() if k not in ("meta", "reject")}
    start = time.monotonic()
    with pytest.raises(Rejected) as err:
        check_row(canonical, limits)
    assert time.monotonic() - start < 3.0
    assert err.value.code == "pattern_timeout"
    assert err.value.path == "messages[1].tool_calls[0].function.arguments"
    assert "took longer than limits.pattern_seconds=0.3 on this row's arguments" in \
        err.value.message


def test_pattern_timeouts_in_the_data_stage_are_rejects_with_their_lines(tmp_path):
    bad = [json.dumps(_call_row(PATTERN_SCHEMAS["pattern"], {"title": EVIL + str(k)}))
           for k in range(3)]
    bad.append(json.dumps(_call_row({"properties": {"title": {"pattern": "^(a+)+$"}}},
                                    {"title": EVIL})))  # regex needs no backtracking here
    bad.append(json.dumps(_call_row(PATTERN_SCHEMAS["pattern"], {"title": "aaaa"})))  # matches
    start = time.monotonic()
    report, out = _run_data(tmp_path, _write(tmp_path / "rows.jsonl", bad), pattern_seconds=0.2)
    assert time.monotonic() - start < 60
    arguments = "messages[1].tool_calls[0].function.arguments"
    assert _rejects(report) == [(21, "pattern_timeout", arguments),
                                (22, "pattern_timeout", arguments),
                                (23, "pattern_timeout", arguments),
                                (24, "argument_invalid", f"{arguments}.title")]
    assert 25 in _written_lines(out)


# ---- nesting depth: limits.json_depth, never a RecursionError ----


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize(("depth", "expected"), [(1, False), (64, False), (65, True),
                                                 (100_000, True)])
def test_depth_is_measured_without_recursion(depth, expected):
    text = '{"a": "[[[[[[[[ not counted \\" [[[[", "b": ' + _nested(depth - 1) + "}"
    assert jsontext.too_deep(text, 64) is expected


def test_rows_nested_too_deep_are_one_reject_each(tmp_path):
    deep = _nested(100_000)
    tools_string = _call_row({"type": "object"}, {"title": "x"})
    tools_string["tools"] = "[" + _nested(5_000, "{}") + "]"
    bad = [
        '{"messages": [{"role": "user", "content": ' + deep + "}]}",
        json.dumps({**_good(1), "extra": json.loads(_nested(65))}),
        '{"messages": ' + _nested(70, '{"role": "user"}') + "}",
        json.dumps(_call_row({"properties": {"t": json.loads('{"items": ' * 70 + "{}"
                                                             + "}" * 70)}}, {"t": []})),
        json.dumps(_call_row({"type": "object"}, '{"title": ' + _nested(100_000) + "}")),
        json.dumps(tools_string),
    ]
    report, out = _run_data(tmp_path, _write(tmp_path / "rows.jsonl", bad))
    assert _rejects(report) == [
        (21, "too_deep", "$"), (22, "too_deep", "$"), (23, "too_deep", "$"),
        (24, "too_deep", "$"),
        (25, "too_deep", "messages[1].tool_calls[0].function.arguments"),
        (26, "too_deep", "tools")]
    messages = {r["line"]: r["message"] for r in report["rejects"]}
    assert messages[21] == ("is nested deeper than limits.json_depth=64; it is not parsed. "
                            "Flatten the row, or raise limits.json_depth.")
    assert _written_lines(out) == set(range(1, 21))


def test_a_json_array_element_nested_too_deep_rejects_only_itself(tmp_path):
    elements = [json.dumps(_good(i)) for i in range(20)]
    elements.insert(5, '{"messages": ' + _nested(100_000) + "}")
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n")
    report, _ = _run_data(tmp_path, path)
    assert report["counts"]["read"] == 21 and report["counts"]["valid"] == 20
    assert [(r["line"], r["code"]) for r in report["rejects"]] == [(7, "too_deep")]


# ---- row size: limits.row_bytes, checked before parsing, with memory bounded ----


def _line_of(size: int, i: int = 0) -> str:
    """A good row's JSON text of exactly size bytes."""
    row = _good(i)
    short = json.dumps(row)
    row["messages"][1]["content"] += "x" * (size - len(short))
    text = json.dumps(row)
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("block", [readers.BLOCK, 1024, 3000])
def test_a_row_over_row_bytes_is_one_reject_naming_its_line(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "BLOCK", block)
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(_good(i)) for i in range(20)]
    lines[3] = _line_of(4096)          # exactly the bound: kept
    lines[7] = _line_of(4097)          # one byte over
    lines[11] = _line_of(50_000)       # many blocks long
    lines.append(_line_of(9_000, 99))  # the last line, no newline after it
    path.write_text("\n".join(lines), encoding="utf-8")
    report, out = _run_data(tmp_path, path, row_bytes=4096)
    assert _rejects(report) == [(8, "row_too_large", "$"), (12, "row_too_large", "$"),
                                (21, "row_too_large", "$")]
    assert report["rejects"][0]["message"] == (
        "is longer than limits.row_bytes=4096 bytes; it is not parsed. Split or shorten the row, "
        "or raise limits.row_bytes.")
    assert report["counts"]["read"] == 21 and 4 in _written_lines(out)


def test_a_json_array_element_over_row_bytes_is_one_reject(tmp_path):
    elements = [json.dumps(_good(i)) for i in range(20)]
    elements[2] = _line_of(8000)
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n")
    report, _ = _run_data(tmp_path, path, row_bytes=4096)
    assert [(r["line"], r["code"]) for r in report["rejects"]] == [(4, "row_too_large")]
    assert report["counts"]["valid"] == 19


def test_a_line_of_hundreds_of_megabytes_is_rejected_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    size = 256 << 20
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(_good(0)) + "\n")
        f.write('{"messages": [{"role": "user", "content": "')
        chunk = "y" * (1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
        f.write('"}]}\n' + json.dumps(_good(1)) + "\n")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from llmops.data.readers import _jsonl_records
        got = [(text is None, error, line) for text, error, line in
               _jsonl_records({str(path)!r}, {LIMITS['row_bytes']})]
        print(got)
        # VmHWM: this process's peak resident memory (ru_maxrss would count the forking parent)
        status = Path("/proc/self/status").read_text().splitlines()
        print(next(int(x.split()[1]) for x in status if x.startswith("VmHWM")) // 1024)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, peak_mb = r.stdout.strip().splitlines()
    assert [x[::2] for x in eval(got)] == [(False, 1), (True, 2), (False, 3)]  # noqa: S307
    assert "[row_too_large] is longer than limits.row_bytes=16777216 bytes" in got
    assert int(peak_mb) < 100, f"peak {peak_mb} MB for a {size >> 20} MB line"


# ---- compressed files: read by their first bytes ----


def _rows_text(n: int = 20) -> bytes:
    return ("\n".join(json.dumps(_good(i)) for i in range(n)) + "\n").encode()


@pytest.mark.parametrize(("name", "pack"), [
    ("rows.jsonl.gz", gzip.compress), ("rows.jsonl", gzip.compress),
    ("rows.jsonl.bz2", bz2.compress), ("rows.json", lzma.compress),
    ("rows.jsonl.xz", lzma.compress),
])
def test_compressed_json_lines_are_read(tmp_path, name, pack):
    (tmp_path / name).write_bytes(pack(_rows_text()))
    rows, rejects = readers.read_source(tmp_path / name, cache_dir=str(tmp_path / "c"))
    assert len(rows) == 20 and len(rejects) == 0
    assert rows[3]["meta"]["line"] == 4 and rows[3]["meta"]["file"] == str(tmp_path / name)


def test_a_gzipped_json_array_is_read(tmp_path):
    array = json.dumps([_good(i) for i in range(5)], indent=1).encode()
    (tmp_path / "rows.json.gz").write_bytes(gzip.compress(array))
    rows, _ = readers.read_source(tmp_path / "rows.json.gz", cache_dir=str(tmp_path / "c"))
    assert [r["messages"][1]["content"] for r in rows][-1] == "Here are your tasks, number 4."


@pytest.mark.parametrize(("magic", "message"), [
    (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "is zstd-compressed, which llmops cannot read. Decompress "
                                       "it (zstd -d rows.jsonl)"),
    (b"PK\x03\x04" + b"\0" * 20, "is zip-compressed, which llmops cannot read. Decompress it "
                                 "(unzip rows.jsonl)"),
    (gzip.compress(_rows_text())[:40], "cannot read"),  # a gzip file cut short
], ids=["zstd", "zip", "gzip_cut_short"])  # fixed ids: xdist's workers must collect the same names
def test_unreadable_compression_names_the_file_and_the_fix(tmp_path, magic, message):
    (tmp_path / "rows.jsonl").write_bytes(magic)
    with pytest.raises(FormatError) as err:
        readers.read_source(tmp_path / "rows.jsonl", cache_dir=str(tmp_path / "c"))
    assert message in str(err.value) and str(tmp_path) in str(err.value)


def test_a_gzipped_data_path_compiles_and_runs(compose_plan, tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(_rows_text()))
    _, plan = compose_plan(["data=jsonl", f"data.path={path}", "dry_run=true"])
    assert str(path) in plan.stage("data").input_files


# ---- a glob of many files: one pass, one warning ----


def test_a_glob_of_many_files_reads_in_one_pass_and_warns_once(tmp_path, caplog):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        row = _good(i) if i != 150 else {"messages": "not a list"}
        (folder / f"{i:04d}.jsonl").write_text(json.dumps(row) + "\n")
    with caplog.at_level(logging.WARNING, logger="test.hostile"):
        report, out = _run_data(tmp_path, f"{folder}/*.jsonl", glob_files_warn=100)
    warnings = [r.getMessage() for r in caplog.records if "glob_files_warn" in r.getMessage()]
    assert warnings == [f"data.path: {folder}/*.jsonl matches 300 files, more than "
                        "limits.glob_files_warn=100; they are read in one pass, but consider "
                        "merging them into fewer files."]
    assert [(r["file"], r["line"], r["row"], r["code"]) for r in report["rejects"]] == [
        (str(folder / "0150.jsonl"), 1, 1, "bad_messages")]
    assert report["counts"]["valid"] == 299
    metas = [json.loads(x)["meta"] for x in (out / "train.jsonl").read_text().splitlines()]
    assert {(m["line"], m["row"]) for m in metas} == {(1, 1)}
    assert {Path(m["file"]).parent for m in metas} == {folder}


def test_files_of_different_formats_in_one_glob_keep_their_own_format(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    alpaca = {"instruction": "say hi", "output": "hi"}
    for i in range(12):
        row = alpaca if i % 3 == 0 else _good(i)
        (folder / f"{i:02d}.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    rows, rejects = readers.read_source(f"{folder}/*.jsonl", cache_dir=str(tmp_path / "c"))
    assert len(rows) == 24 and len(rejects) == 0
    formats = {(Path(r["meta"]["file"]).name, r["meta"]["row"], r["meta"]["format"])
               for r in rows}
    assert ("00.jsonl", 2, "alpaca") in formats and ("01.jsonl", 2, "openai") in formats
    assert ("03.jsonl", 1, "alpaca") in formats


SIGTERM_SCRIPT = """
import json, logging, sys, time
from pathlib import Path
from llmops.cli.job import _sigterm_as_interrupt
from llmops.errors import Terminated
from llmops.core.context import StageContext
from llmops.stages import data

folder, out, limits = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
source = {"path": f"{folder}/*.jsonl", "format": "auto", "weight": None, "samples": None,
          "columns": {}, "tags": {}}
params = {"source": "files", "sources": [source], "format": "auto", "columns": {}, "tags": {},
          "hf_id": None, "hf_split": "train", "n_examples": 10, "system_prompt": None,
          "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0, "dedup": True,
          "max_length": 512, "on_error": "keep", "on_unsupported": "fail", "num_proc": 2,
          "model": {"name": "x", "hub_id": None, "trust_remote_code": False}, "limits": limits}
logging.basicConfig(level=logging.INFO)
try:
    with _sigterm_as_interrupt():
        print("started", flush=True)
        data.run(params, {}, out, StageContext(run_dir=out, logger=logging.getLogger("x")))
except Terminated:
    print("terminated", flush=True)
    sys.exit(143)
sys.exit(0)
"""


def test_sigterm_during_the_data_stage_exits_143_promptly(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):  # each row's pattern check runs into its bound: minutes of work
        rows = [json.dumps(_call_row(PATTERN_SCHEMAS["pattern"], {"title": f"{EVIL}{i}.{k}"}))
                for k in range(20)]
        (folder / f"{i:05d}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "out").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limits = {**LIMITS, "pattern_seconds": 0.05}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(folder),
                             str(tmp_path / "out"), json.dumps(limits)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(64), "")),
                              daemon=True)
    reader.start()
    assert proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 120
    while "(num_proc=2)" not in "".join(err) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the map's workers run
    assert "(num_proc=2)" in "".join(err), "".join(err)[-2000:]
    time.sleep(1)
    assert proc.poll() is None, "".join(err)[-2000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)  # EOF only once no worker holds the pipes
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the data stage (or a map worker) did not exit within 60 s of SIGTERM")
    reader.join(10)
    assert proc.returncode == 143, "".join(err)[-2000:]
    assert "terminated" in out and "Traceback" not in "".join(err)
    assert time.monotonic() - sent < 60


# ---- a chat template that raises or loops, in the data stage ----


def _tokenizer_folder(folder: Path, template: str) -> Path:
    """A small word-level tokenizer saved with the given chat template (tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["[UNK]", "user", "assistant", "list", "tasks"])}
    core = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    return folder


PLAIN_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"


@pytest.mark.parametrize(("template", "error"), [
    ("{{ raise_exception('boom: this template refuses') }}",
     "TemplateError: boom: this template refuses"),
    ("{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}",
     "No filter named 'no_such_filter'"),
    ("{% for m in messages %}{{ m.content + 1 }}{% endfor %}",
     'can only concatenate str (not "int") to str'),
])
def test_a_template_that_raises_on_every_row_is_a_config_error_with_its_message(
        tmp_path, template, error):
    from llmops.errors import EXIT_CONFIG, ConfigError

    folder = _tokenizer_folder(tmp_path / "tok", template)
    with pytest.raises(ConfigError) as err:
        _run_data(tmp_path, _write(tmp_path / "rows.jsonl", []), hub_id=str(folder))
    assert err.value.exit_code == EXIT_CONFIG
    assert [p.key for p in err.value.problems] == ["model.chat_template"]
    text = str(err.value)
    assert f"the chat template fails on every row of {tmp_path / 'rows.jsonl'} (20 rows: " in text
    assert "[template_error] model.chat_template cannot render this row: " in text
    assert error in text and "too_long" not in text and "max_length" not in text


def test_a_template_that_raises_on_some_rows_rejects_only_those(tmp_path):
    template = ("{% for m in messages %}{% if 'forbidden' in m.content %}"
                "{{ raise_exception('no forbidden words, line ' ~ loop.index) }}{% endif %}"
                "{{ m.role }}: {{ m.content }}\n{% endfor %}")
    folder = _tokenizer_folder(tmp_path / "tok", template)
    bad = [json.dumps({"messages": [{"role": "user", "content": "a forbidden question"},
                                    {"role": "assistant", "content": "ok"}]}),
           json.dumps({"messages": [{"role": "user", "content": "fine"},
                                    {"role": "assistant", "content": "forbidden answer"}]})]
    report, out = _run_data(tmp_path, _write(tmp_path / "rows.jsonl", bad), hub_id=str(folder))
    assert [(r["line"], r["code"], r["message"]) for r in report["rejects"]] == [
        (21, "template_error", "model.chat_template cannot render this row: TemplateError: no "
                               "forbidden words, line 1. Fix the row or the template."),
        (22, "template_error", "model.chat_template cannot render this row: TemplateError: no "
                               "forbidden words, line 2. Fix the row or the template.")]
    assert report["token_lengths"]["method"] == "chat_template"
    assert report["token_lengths"]["count"] == 20 and "not_rendered" not in report["token_lengths"]


@pytest.mark.parametrize(("template", "num_proc"), [
    ("{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
     None),
    ("{% for m in messages %}{% for i in range(99999) %}{% for j in range(99999) %}"
     "{% endfor %}{% endfor %}{{ m.content }}{% endfor %}", None),
    ("{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
     2),  # in map workers: the bound holds there and comes back to the stage
])
def test_a_template_that_loops_is_a_config_error_naming_the_bound(tmp_path, template, num_proc):
    from llmops.errors import EXIT_CONFIG, ConfigError

    folder = _tokenizer_folder(tmp_path / "tok", template)
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        _run_data(tmp_path, _write(tmp_path / "rows.jsonl", []), hub_id=str(folder),
                  num_proc=num_proc, template_seconds=0.5)
    assert time.monotonic() - start < 30
    assert err.value.exit_code == EXIT_CONFIG
    assert str(err.value) == (
        "Config is invalid (1 problem):\n  - model.chat_template: rendering a row of "
        f"{tmp_path / 'rows.jsonl'} through the chat template took longer than "
        "limits.template_seconds=0.5 (a loop that runs too long?). Fix the template, or raise "
        "limits.template_seconds.")


def test_a_good_template_measures_every_row(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", PLAIN_TEMPLATE)
    report, _ = _run_data(tmp_path, _write(tmp_path / "rows.jsonl", []), hub_id=str(folder))
    assert report["counts"]["rejected"] == 0 and report["token_lengths"]["count"] == 20


@pytest.mark.parametrize(("pattern", "why"), [
    ("a{99999999999}", "OverflowError: the repetition number is too large"),
    ("(?P<", "'(?P<' is not a 'regex'"),
    ("\\p{L}+$", "'\\\\p{L}+$' is not a 'regex'"),
])
def test_a_pattern_that_cannot_compile_is_an_invalid_schema(pattern, why):
    from llmops.data.canonical import Rejected
    from llmops.data.convert import Converter
    from llmops.data.toolcheck import check_row

    limits = Limits(**LIMITS)
    schema = {"type": "object", "properties": {"title": {"pattern": pattern}}}
    out = Converter("openai", "x.jsonl", limits=limits)(
        {"__raw__": [json.dumps(_call_row(schema, {"title": "a"}))], "__error__": [None],
         "__line__": [1]}, [0])
    with pytest.raises(Rejected) as err:
        check_row({k: v[0] for k, v in out.items() if k not in ("meta", "reject")}, limits)
    assert (err.value.code, err.value.path) == ("tool_schema_invalid",
                                                "tools[0].function.parameters")
    assert err.value.message == f"is not a valid JSON Schema ({why}). Fix the tool's schema."


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_a_record_of_a_columnar_file_over_row_bytes_is_one_reject(tmp_path, suffix):
    import datasets

    rows = [{"instruction": f"say hi {i}", "output": "hi"} for i in range(20)]
    rows[4]["output"] = "x" * 10_000
    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / f"rows.{suffix}"
    getattr(ds, f"to_{suffix}")(str(path))
    report, _ = _run_data(tmp_path, path, row_bytes=4096)
    assert [(r["row"], r["code"]) for r in report["rejects"]] == [(5, "row_too_large")]
    assert report["counts"]["valid"] == 19
