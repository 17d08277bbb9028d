"""python -m llmops.monitor RUN_DIR: probe a live endpoint (or score a log) against the baseline.

    python -m llmops.monitor RUN_DIR [--endpoint URL] [--probes N | --duration S]
                             [--metrics-port P] [--metrics-host H] [--serve-seconds S]
    python -m llmops.monitor RUN_DIR --log requests.jsonl

Reads RUN_DIR/stages/monitor/{baseline.json, probes.jsonl} (the monitor stage's output), writes
RUN_DIR/monitor_report.json. Exit codes: 0 no alert, 6 an alert fires (EXIT_ALERT), 2 bad input
(no baseline, unreadable log), 1 the endpoint failed every probe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    p.add_argument("--no-metrics", action="store_true", help="Serve no Prometheus endpoint.")
    p.add_argument("--serve-seconds", type=float, default=0.0, help="Keep serving the final "
                   "figures this long after probing.")
    p.add_argument("--report", type=Path, help="Where to write the report. Default: "
                   "RUN_DIR/monitor_report.json.")
    args = p.parse_args(argv)
    if args.probes is not None and args.probes < 1:
        p.error(f"--probes must be ≥ 1 (got {args.probes}).")
    if args.duration is not None and args.duration <= 0:
        p.error(f"--duration must be > 0 seconds (got {args.duration}).")
    return args


def load(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads the monitor stage's baseline and probe set from a run folder.

    Raises:
        MonitorError: If the run has no monitor stage output or it is unreadable.
    """
    from llmops.backends.common import read_jsonl
    from llmops.compiler.plan import report_name

    folder = run_dir / "stages" / "monitor"
    path = folder / report_name("monitor")
    if not path.is_file():
        raise MonitorError(f"{path} does not exist: {run_dir} is not a run with a monitor stage. "
                           "Run: python -m llmops deploy=openai monitor=default")
    try:
        baseline = json.loads(path.read_text("utf-8"))
        probes = read_jsonl(folder / baseline["probes"]["file"])
    except (OSError, ValueError, KeyError) as exc:
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
    """Sends probes to the endpoint; returns (rows, answers, latencies, errors)."""
    from openai import OpenAI, OpenAIError

    from llmops.monitor.score import answer_text, compare, live_samples

    base_url = _base_url(args.endpoint or baseline["endpoint"])
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0,
                    timeout=float(baseline["request_timeout_s"]))
    model = args.model or baseline["model"]
    count = args.probes or (len(probes) if args.duration is None else sys.maxsize)
    rows, answers, latencies, errors, last_error = [], [], [], 0, ""
    deadline = time.monotonic() + args.duration if args.duration else None
    for i in range(count):
        if deadline is not None and time.monotonic() > deadline:
            break
        row = probes[i % len(probes)]
        messages, tools = request_of(row)
        extra = {"tools": tools} if tools else {}
        t0 = time.perf_counter()
        try:
            reply = client.chat.completions.create(
                model=model, messages=messages, max_tokens=int(baseline["max_tokens"]),
                temperature=0.0, seed=0, **extra)
        except OpenAIError as exc:
            errors, last_error = errors + 1, f"{type(exc).__name__}: {exc}"
            if exporter:
                exporter.observe(None, failed=True)
            continue
        seconds = time.perf_counter() - t0
        latencies.append(seconds)
        rows.append(row)
        answers.append(answer_text(reply.choices[0].message.model_dump(), baseline["call_syntax"]))
        if exporter:
            exporter.observe(seconds)
            exporter.update(compare(baseline, live_samples(rows, answers,
                                                           baseline["call_syntax"]), latencies))
    if not rows:
        raise MonitorError(f"every probe to {base_url} failed ({errors} requests; last: "
                           f"{last_error}). Check --endpoint and that the server is running.",
                           EXIT_STAGE_FAILED)
    return rows, answers, latencies, errors


def score_log(baseline: dict[str, Any], probes: list[dict[str, Any]], path: Path
              ) -> tuple[list, list, list[float], list[bool], int]:
    """Scores a JSONL log of {"request": {messages, tools}, "response": {choices: [...]},
    "latency_s"?} lines: lines whose request is a probe's are scored in full; the calls of the
    others count towards JSON validity only (they have no reference answer).

    Returns:
        (rows, answers, latencies, extra_json_valid, unreferenced lines).

    Raises:
        MonitorError: If the log cannot be read, naming the file and line.
    """
    from llmops.monitor.score import answer_text, parser
    from llmops.scoring.tools import score_calls

    key = {json.dumps(request_of(r)[0], sort_keys=True): r for r in probes}
    rows, answers, latencies, extra, unreferenced = [], [], [], [], 0
    parse = parser(baseline["call_syntax"])
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise MonitorError(f"--log {path}: cannot read it ({exc}).") from exc
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            messages = [{k: m[k] for k in MESSAGE_KEYS if k in m}
                        for m in entry["request"]["messages"]]
            message = entry["response"]["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MonitorError(f"{path}:{no}: not a logged request/response ({exc!r}). Each "
                               'line needs {"request": {"messages": [...]}, "response": '
                               '{"choices": [{"message": {...}}]}}.') from exc
        answer = answer_text(message, baseline["call_syntax"])
        if entry.get("latency_s") is not None:
            latencies.append(float(entry["latency_s"]))
        row = key.get(json.dumps(messages, sort_keys=True))
        if row is not None:
            rows.append(row)
            answers.append(answer)
            continue
        unreferenced += 1
        parsed = parse(answer)
        if parsed.calls or parsed.errors:
            own = score_calls(parsed.calls, parsed, entry["request"].get("tools"))
            extra.append(bool(own["json_valid"]))
    return rows, answers, latencies, extra, unreferenced


def run(args: argparse.Namespace) -> int:
    """Runs one monitoring pass and writes the report; returns the exit code."""
    from llmops.files import write_json_atomic
    from llmops.monitor.exporter import Exporter
    from llmops.monitor.score import compare, live_samples

    baseline, probes = load(args.run_dir)
    exporter = None
    if not args.no_metrics:
        exporter = Exporter(baseline["model"])
        host = args.metrics_host or baseline["metrics_host"]
        port = exporter.serve(host, baseline["metrics_port"] if args.metrics_port is None
                              else args.metrics_port)
        print(f"monitor: metrics at http://{host}:{port}/metrics", flush=True)
    try:
        extra, unreferenced, errors = [], 0, 0
        if args.log:
            rows, answers, latencies, extra, unreferenced = score_log(baseline, probes, args.log)
            source = {"log": str(args.log), "matched_probes": len(rows),
                      "unreferenced": unreferenced}
        else:
            rows, answers, latencies, errors = probe(baseline, probes, args, exporter)
            source = {"endpoint": _base_url(args.endpoint or baseline["endpoint"]),
                      "model": args.model or baseline["model"]}
        result = compare(baseline, live_samples(rows, answers, baseline["call_syntax"], extra),
                         latencies)
        if exporter:
            exporter.update(result)
        report = {**source, "probes": len(rows), "errors": errors,
                  "significance": baseline["significance"],
                  "probe_set_sha256": baseline["probes"]["sha256"], **result,
                  "exit_code": EXIT_ALERT if result["alerts_firing"] else EXIT_OK}
        write_json_atomic(args.report or args.run_dir / "monitor_report.json", report)
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
        if exporter and args.serve_seconds > 0:
            time.sleep(args.serve_seconds)
        return int(report["exit_code"])
    finally:
        if exporter:
            exporter.stop()


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
