"""python -m llmops.monitor RUN_DIR: probe a live endpoint (or score a log) against the baseline.

    python -m llmops.monitor RUN_DIR [--endpoint URL] [--probes N | --duration S]
                             [--metrics-port P] [--metrics-host H] [--serve-seconds S]
    python -m llmops.monitor RUN_DIR --log requests.jsonl

Reads RUN_DIR/stages/monitor/{baseline.json, probes.jsonl} (the monitor stage's output), writes
RUN_DIR/monitor_report.json (strict JSON). Exit codes: 0 no alert, 6 an alert fires (EXIT_ALERT),
2 bad input (no baseline; a log line that is not UTF-8, not JSON, nested deeper than
limits.json_depth, longer than limits.row_bytes, or whose latency is not a finite number: named by
file and line; a metrics host that is not loopback without --allow-public-bind), 1 the endpoint
failed every probe. Each probe request ends within limits.http_total_seconds in all (each read
within monitor.request_timeout_s); --duration ends the whole probing. The limits come from the
run's config (baseline.json) unless a flag overrides them. SIGTERM or Ctrl-C during
--serve-seconds ends the serving early with the same exit code (the report is already written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmops.errors import EXIT_ALERT, EXIT_CONFIG, EXIT_OK, EXIT_STAGE_FAILED

MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


class MonitorError(Exception):
    """A problem the monitor reports in one message, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmops.monitor", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="Run folder of a plan with monitor=default.")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (…/v1; an Ollama host gets "
                   "/v1 added). Default: the deploy stage's base_url.")
    p.add_argument("--model", help="Model name at the endpoint. Default: the deployed name.")
    p.add_argument("--probes", type=int, help="Probes to send (cycling the probe set). "
                   "Default: the whole probe set once.")
    p.add_argument("--duration", type=float, help="Stop probing after this many seconds.")
    p.add_argument("--log", type=Path, help="Score this JSONL log of requests and responses "
                   "instead of calling the model.")
    p.add_argument("--metrics-port", type=int, help="Port of the Prometheus endpoint (0: a free "
                   "one). Default: monitor.metrics_port.")
    p.add_argument("--metrics-host", help="Interface of the Prometheus endpoint. Default: "
                   "monitor.metrics_host (127.0.0.1).")
    p.add_argument("--allow-public-bind", action="store_true", help="Allow a --metrics-host "
                   "that is not a loopback address (it exposes the live figures to the network). "
                   "Default: monitor.allow_public_bind.")
    p.add_argument("--no-metrics", action="store_true", help="Serve no Prometheus endpoint.")
    p.add_argument("--http-total-seconds", type=float, help="Longest time one probe request may "
                   "take in all. Default: limits.http_total_seconds.")
    p.add_argument("--row-bytes", type=int, help="Longest --log line in bytes. Default: "
                   "limits.row_bytes.")
    p.add_argument("--json-depth", type=int, help="Deepest nesting of a --log line. Default: "
                   "limits.json_depth.")
    p.add_argument("--serve-seconds", type=float, default=0.0, help="Keep serving the final "
                   "figures this long after probing.")
    p.add_argument("--report", type=Path, help="Where to write the report. Default: "
                   "RUN_DIR/monitor_report.json.")
    args = p.parse_args(argv)
    if args.probes is not None and args.probes < 1:
        p.error(f"--probes must be ≥ 1 (got {args.probes}).")
    for flag, value in (("--duration", args.duration), ("--serve-seconds", args.serve_seconds),
                        ("--http-total-seconds", args.http_total_seconds)):
        if value is not None and (not math.isfinite(value) or value < 0
                                  or (value == 0 and flag != "--serve-seconds")):
            p.error(f"{flag} must be a finite number of seconds > 0 (got {value}).")
    for flag, value in (("--row-bytes", args.row_bytes), ("--json-depth", args.json_depth)):
        if value is not None and value < 1:
            p.error(f"{flag} must be ≥ 1 (got {value}).")
    return args


#: What the monitor needs from baseline.json (the monitor stage's report).
_BASELINE_KEYS = ("model", "endpoint", "call_syntax", "figures", "latency", "significance",
                  "probes", "metrics_host", "metrics_port", "allow_public_bind",
                  "request_timeout_s", "max_tokens", "limits")


def limits(baseline: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Returns the bounds of this pass: the run's limits.* (baseline.json), flags overriding."""
    base = baseline["limits"]
    return {"row_bytes": args.row_bytes or int(base["row_bytes"]),
            "json_depth": args.json_depth or int(base["json_depth"]),
            "http_total_seconds": args.http_total_seconds or float(base["http_total_seconds"])}


def load(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads the monitor stage's baseline and probe set from a run folder.

    Raises:
        MonitorError: If the run has no monitor stage output or it is unreadable.
    """
    from llmops.core.plan import report_name
    from llmops.files import read_jsonl

    folder = run_dir / "stages" / "monitor"
    path = folder / report_name("monitor")
    if not path.is_file():
        raise MonitorError(f"{path} does not exist: {run_dir} is not a run with a monitor stage. "
                           "Run: python -m llmops deploy=openai monitor=default")
    try:
        baseline = json.loads(path.read_text("utf-8"))
        missing = [k for k in _BASELINE_KEYS if k not in baseline]
        if missing:
            raise KeyError(f"{path.name} lacks {', '.join(missing)} (written by an older llmops?)")
        probes = read_jsonl(folder / baseline["probes"]["file"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise MonitorError(f"cannot read the baseline in {folder} ({exc}). Rerun the plan "
                           "with monitor=default.") from exc
    return baseline, probes


def request_of(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Returns a probe row's request: its messages before the reference answer, and its tools."""
    messages = [{k: m[k] for k in MESSAGE_KEYS if k in m} for m in row["messages"][:-1]]
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    return messages, tools or None


def _base_url(endpoint: str) -> str:
    url = endpoint.rstrip("/")
    return url if urlparse(url).path not in ("", "/") else url + "/v1"


def probe(baseline: dict[str, Any], probes: list[dict[str, Any]], args: argparse.Namespace,
          exporter: Any) -> tuple[list, list, list[float], int]:
    """Sends probes to the endpoint; returns (rows, answers, latencies, errors).

    Each request ends within limits.http_total_seconds in all (anyio cancels it, however slowly
    the server trickles its reply; each read also ends within request_timeout_s), and
    --duration ends the whole probing, the request in flight included. A reply that is not a
    chat completion (not JSON, `{}`, no choices) counts as a failed probe.
    """
    import anyio

    base_url = _base_url(args.endpoint or baseline["endpoint"])
    total = limits(baseline, args)["http_total_seconds"]
    state: dict[str, Any] = {"rows": [], "answers": [], "latencies": [], "errors": 0,
                             "last_error": ""}

    async def _probe_all() -> None:
        with anyio.move_on_after(args.duration if args.duration else math.inf):
            await _send(baseline, probes, args, exporter, base_url, total, state)

    anyio.run(_probe_all)
    rows, errors = state["rows"], state["errors"]
    if not rows:
        raise MonitorError(f"every probe to {base_url} failed ({errors} requests; last: "
                           f"{state['last_error'] or 'none sent within --duration'}). Check "
                           "--endpoint and that the server is running.", EXIT_STAGE_FAILED)
    return rows, state["answers"], state["latencies"], errors


async def _send(baseline: dict[str, Any], probes: list[dict[str, Any]], args: argparse.Namespace,
                exporter: Any, base_url: str, total: float, state: dict[str, Any]) -> None:
    import anyio
    from openai import AsyncOpenAI, OpenAIError

    from llmops.monitor.score import compare, live_samples
    from llmops.serving.chat_api import answer_text

    # OpenAI's API (train.backend=openai) needs OPENAI_API_KEY; a local server needs none
    key = os.environ.get("OPENAI_API_KEY") if baseline.get("target") == "openai_api" else None
    client = AsyncOpenAI(base_url=base_url, api_key=key or "not-needed", max_retries=0,
                         timeout=float(baseline["request_timeout_s"]))  # each read
    model = args.model or baseline["model"]
    count = args.probes or (len(probes) if args.duration is None else sys.maxsize)
    rows, answers, latencies = state["rows"], state["answers"], state["latencies"]
    async with client:
        for i in range(count):
            row = probes[i % len(probes)]
            messages, tools = request_of(row)
            extra = {"tools": tools} if tools else {}
            t0 = time.perf_counter()
            try:
                with anyio.fail_after(total):
                    reply = await client.chat.completions.create(
                        model=model, messages=messages, max_tokens=int(baseline["max_tokens"]),
                        temperature=0.0, seed=0, **extra)
                message = reply.choices[0].message.model_dump()
                if not isinstance(message, dict):
                    raise TypeError(f"choices[0].message is {type(message).__name__}")
                answer = answer_text(message, baseline["call_syntax"])
            except TimeoutError:
                state["errors"] += 1
                state["last_error"] = (f"no complete reply within limits.http_total_seconds="
                                       f"{total:g} s")
                if exporter:
                    exporter.observe(None, failed=True)
                continue
            except (OpenAIError, AttributeError, IndexError, KeyError, TypeError,
                    ValueError) as exc:
                state["errors"] += 1
                state["last_error"] = f"{type(exc).__name__}: {exc}"[:500]
                if exporter:
                    exporter.observe(None, failed=True)
                continue
            seconds = time.perf_counter() - t0
            latencies.append(seconds)
            rows.append(row)
            answers.append(answer)
            if exporter:
                exporter.observe(seconds)
                exporter.update(compare(baseline, live_samples(rows, answers,
                                                               baseline["call_syntax"]),
                                        latencies))


def _log_lines(path: Path, row_bytes: int):
    """Yields (line number, bytes) of a log, reading at most row_bytes + 1 bytes per line.

    Raises:
        MonitorError: A line longer than row_bytes (named by file and line), or an unreadable
            file.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MonitorError(f"--log {path}: cannot read it ({exc}).") from exc
    with f:
        no = 0
        while True:
            try:
                line = f.readline(row_bytes + 1)
            except OSError as exc:
                raise MonitorError(f"--log {path}: cannot read it ({exc}).") from exc
            if not line:
                return
            no += 1
            if len(line.rstrip(b"\r\n")) > row_bytes:
                raise MonitorError(f"{path}:{no}: the line is longer than limits.row_bytes="
                                   f"{row_bytes} bytes. Split the log, or raise the bound with "
                                   "--row-bytes N (or limits.row_bytes).")
            yield no, line


def _latency(value: Any, where: str) -> float | None:
    """Returns a logged latency in seconds: a finite number ≥ 0, or None when not logged."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise MonitorError(f"{where}: latency_s must be a finite number of seconds ≥ 0 (got "
                           f"{value!r}). Log the request's duration as a number, or leave "
                           "latency_s out.")
    return float(value)


def score_log(baseline: dict[str, Any], probes: list[dict[str, Any]], path: Path,
              bounds: dict[str, Any] | None = None
              ) -> tuple[list, list, list[float], list[bool], int]:
    """Scores a JSONL log of {"request": {messages, tools}, "response": {choices: [...]},
    "latency_s"?} lines: lines whose request is a probe's are scored in full; the calls of the
    others count towards JSON validity only (they have no reference answer).

    Args:
        bounds: row_bytes and json_depth of a line (default: the run's limits).

    Returns:
        (rows, answers, latencies, extra_json_valid, unreferenced lines).

    Raises:
        MonitorError: If the log cannot be read, naming the file and line: a line that is not
            UTF-8, not JSON (NaN and Infinity included), nested deeper than limits.json_depth,
            longer than limits.row_bytes, or not a logged request/response.
    """
    from llmops.files import JSONLimitError, loads_bounded
    from llmops.monitor.score import parser
    from llmops.scoring.tools import score_calls
    from llmops.serving.chat_api import answer_text

    bounds = bounds or baseline["limits"]
    key = {json.dumps(request_of(r)[0], sort_keys=True): r for r in probes}
    rows, answers, latencies, extra, unreferenced = [], [], [], [], 0
    parse = parser(baseline["call_syntax"])
    for no, raw in _log_lines(path, int(bounds["row_bytes"])):
        where = f"{path}:{no}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MonitorError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                               f"{exc.start + 1}). Write the log as UTF-8.") from exc
        if not line.strip():
            continue
        try:
            entry = loads_bounded(line, int(bounds["json_depth"]))
        except JSONLimitError as exc:
            raise MonitorError(f"{where}: {exc}. Raise the bound with --json-depth N (or "
                               "limits.json_depth) if the line is genuine.") from exc
        except ValueError as exc:
            raise MonitorError(f"{where}: not JSON ({exc}).") from exc
        try:
            messages = [{k: m[k] for k in MESSAGE_KEYS if k in m}
                        for m in entry["request"]["messages"]]
            message = entry["response"]["choices"][0]["message"]
            if not isinstance(message, dict) or not all(isinstance(m, dict)
                                                        for m in entry["request"]["messages"]):
                raise TypeError("messages must be objects")
            answer = answer_text(message, baseline["call_syntax"])
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MonitorError(f"{where}: not a logged request/response ({exc!r}). Each "
                               'line needs {"request": {"messages": [...]}, "response": '
                               '{"choices": [{"message": {...}}]}}.') from exc
        seconds = _latency(entry.get("latency_s"), where)
        if seconds is not None:
            latencies.append(seconds)
        row = key.get(json.dumps(messages, sort_keys=True))
        if row is not None:
            rows.append(row)
            answers.append(answer)
            continue
        unreferenced += 1
        parsed = parse(answer)
        if parsed.calls or parsed.errors:
            tools = entry["request"].get("tools")
            try:
                own = score_calls(parsed.calls, parsed, tools if isinstance(tools, list) else None)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise MonitorError(f"{where}: cannot score the logged call against its tools "
                                   f"({exc!r}).") from exc
            extra.append(bool(own["json_valid"]))
    return rows, answers, latencies, extra, unreferenced


def run(args: argparse.Namespace) -> int:
    """Runs one monitoring pass and writes the report; returns the exit code."""
    from llmops.config.rules.bind import is_loopback, public_bind_message
    from llmops.files import write_json
    from llmops.monitor.exporter import Exporter
    from llmops.monitor.score import compare, live_samples

    baseline, probes = load(args.run_dir)
    bounds = limits(baseline, args)
    exporter = None
    if not args.no_metrics:
        host = args.metrics_host or baseline["metrics_host"]
        if not is_loopback(host) and not (args.allow_public_bind or baseline["allow_public_bind"]):
            raise MonitorError("--metrics-host " + public_bind_message(
                "monitor.metrics_host", host, "--allow-public-bind (or monitor.allow_public_bind"
                "=true in the run's config)"))
        exporter = Exporter(baseline["model"])
        port = exporter.serve(host, baseline["metrics_port"] if args.metrics_port is None
                              else args.metrics_port)
        print(f"monitor: metrics at http://{host}:{port}/metrics", flush=True)
    try:
        extra, unreferenced, errors = [], 0, 0
        if args.log:
            rows, answers, latencies, extra, unreferenced = score_log(baseline, probes, args.log,
                                                                      bounds)
            source = {"log": str(args.log), "matched_probes": len(rows),
                      "unreferenced": unreferenced}
        else:
            rows, answers, latencies, errors = probe(baseline, probes, args, exporter)
            source = {"endpoint": _base_url(args.endpoint or baseline["endpoint"]),
                      "model": args.model or baseline["model"]}
        result = compare(baseline, live_samples(rows, answers, baseline["call_syntax"], extra),
                         latencies)
        serve = exporter is not None and args.serve_seconds > 0
        with _stop_on_signal(serve) as stop:  # from here a stop ends only the serving
            if exporter:
                exporter.update(result)
            report = {**source, "probes": len(rows), "errors": errors, "limits": bounds,
                      "significance": baseline["significance"],
                      "probe_set_sha256": baseline["probes"]["sha256"], **result,
                      "exit_code": EXIT_ALERT if result["alerts_firing"] else EXIT_OK}
            write_json(args.report or args.run_dir / "monitor_report.json", report,
                       allow_nan=False)
            for name, e in result["figures"].items():
                now = "n/a" if e["now"] is None else f"{e['now']:.4g}"
                print(f"monitor: {name}: now {now} (n={e['n']}) vs baseline {e['baseline']:.4g} "
                      f"(n={e['baseline_n']}), threshold {e['threshold']:g}, p={e['p_value']}"
                      f"{' FIRING' if e['firing'] else ''}")
            lat = result["latency"]
            print(f"monitor: latency p95 {lat['p95_s']} s vs threshold {lat['threshold_s']:g} s"
                  f"{' FIRING' if lat['firing'] else ''}")
            if result["alerts_firing"]:
                print(f"monitor: ALERT: {', '.join(result['alerts_firing'])}", file=sys.stderr)
            if serve:
                _serve_final(args.serve_seconds, stop)
            return int(report["exit_code"])
    finally:
        if exporter:
            exporter.stop()


@contextmanager
def _stop_on_signal(enabled: bool) -> Iterator[threading.Event]:
    """Yields an event that SIGTERM or Ctrl-C sets (with `enabled`; else the signals keep their
    handlers); restores the handlers after."""
    stop = threading.Event()
    if not enabled:
        yield stop
        return
    previous = {s: signal.signal(s, lambda signum, frame: stop.set())
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_final(seconds: float, stop: threading.Event) -> None:
    """Waits while the exporter serves the final figures, until `stop` is set (SIGTERM or
    Ctrl-C: the figures are final and reported, so the exit code stays the monitor's)."""
    deadline = time.monotonic() + seconds
    while not stop.wait(min(0.2, max(deadline - time.monotonic(), 0))):
        if time.monotonic() >= deadline:
            return
    print("monitor: stopped serving the final figures early", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the monitor; returns the exit code."""
    args = _args(argv)
    try:
        return run(args)
    except MonitorError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"monitor: {exc}. Pick another --metrics-port.", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
