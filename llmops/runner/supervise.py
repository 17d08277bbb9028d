"""The runner's side of the stage process: it outlives the stage, so a killed stage is recorded.

`StageProcess` starts `python -m llmops.runner.child` once per job, at the first stage that runs
(a run whose stages are all cached starts none), and runs every stage there (sweep points run one
after another in the CLI's process share one: llmops.runner.shared). A package no stage
of the plan uses that costs seconds to import as a side effect of another (`unused_packages`:
bitsandbytes, which peft imports whenever it is installed; scipy, which transformers imports for
object detection losses; trio, which the hub's HTTP client imports; wandb, which TRL imports) is
kept out of that process. While a stage runs it samples the memory of the stage's process tree
(psutil); when the process dies (the kernel's out-of-memory killer sends SIGKILL, native code
segfaults) it raises a StageError that names the stage, the signal, the peak and what the
compute plan planned, so the runner's manifest says `failed` with that reason. A stop of the
runner (Ctrl-C, SIGTERM, submitit's requeue) stops the stage process first (SIGTERM; SIGKILL
after a grace period), then goes on as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from llmops.errors import StageError
from llmops.runner.memory import death_message

log = logging.getLogger("llmops")

#: What starts the stage process (tests may wrap it to inject faults into the real process).
CHILD_MODULE = "llmops.runner.child"
SAMPLE_S = 0.2  # how often the memory of the stage's process tree is sampled
#: How often the stage process's descendants are looked for (psutil reads every process's
#: /proc/PID/stat to find them, ~3 ms on a busy host); the ones found are sampled every SAMPLE_S.
TREE_EVERY_S = 1.0
STOP_WAIT_S = 30  # how long a stopped stage may take to end before it is killed


class StageDied(StageError):
    """The stage's process ended without reporting (a signal, an exit); carries the manifest
    fields that say how (`signal` or `exit_code`, `peak_rss_gb`, `planned`)."""

    def __init__(self, message: str, fields: dict[str, Any]):
        super().__init__(message)
        self.fields = fields


def needs_bitsandbytes(params: Mapping[str, Any]) -> bool:
    """Tells whether a stage with these params may load bitsandbytes: a k-bit base (quant.type
    other than none), an adapter trained on one (merge's quant_trained), an 8-bit optimizer
    (train.optimizer), or the unsloth backend, which quantizes through it."""
    quant = params.get("quant")
    if isinstance(quant, Mapping) and quant.get("type", "none") != "none":
        return True
    if params.get("quant_trained", "none") != "none":
        return True
    train = params.get("train")
    return isinstance(train, Mapping) and (
        "8bit" in str(train.get("optimizer", "")) or train.get("backend") == "unsloth")


def needs_scipy(params: Mapping[str, Any]) -> bool:
    """Tells whether a stage with these params may load scipy: an lm-evaluation-harness stage
    (its harness `tasks`), whose task metrics (f1, mcc) compute through scikit-learn on scipy."""
    return "tasks" in params


def unused_packages(stage_params: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Returns the packages the stage process of a plan with these stages keeps out.

    bitsandbytes when no stage needs it (`needs_bitsandbytes`): peft imports it whenever it is
    installed (peft.helpers), and its import compiles kernels with torch.compile and asks the
    Hugging Face hub for a CPU kernel, ~2 CPU-s in every process that imports peft.

    scipy when no stage needs it (`needs_scipy`): transformers' model loading imports its
    object-detection losses, which import scipy.optimize whenever scipy is installed (~0.4 CPU-s
    in every process that loads a model); no language-model stage uses them.

    trio always: the hub's HTTP client (httpcore2, through transformers.utils.hub) imports it
    whenever it is installed, for its trio backend (~0.1 CPU-s); every stage's HTTP (the hub,
    a served model, OpenAI's API) is synchronous or runs on asyncio.

    wandb always: TRL's trainers import it whenever it is installed (~0.4 CPU-s), but no stage
    logs to W&B (the trainers' report_to is "none"); tracking=wandb's sink runs in the runner
    (llmops.tracking.wandb_sink), which this does not touch.

    Kept out, peft, transformers, TRL and httpcore2 see a package as not installed, as they do
    where it is not.
    """
    params = list(stage_params)
    bnb = () if any(needs_bitsandbytes(p) for p in params) else ("bitsandbytes",)
    scipy = () if any(needs_scipy(p) for p in params) else ("scipy",)
    return (*bnb, *scipy, "trio", "wandb")


class StageProcess:
    """One job's stage process, started on first use; `close()` ends it.

    Args:
        without: Packages the process keeps out (`unused_packages`): an import of one fails
            there as if it were not installed.
    """

    def __init__(self, without: tuple[str, ...] = ()) -> None:
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.peak = 0  # bytes: the sampled peak of the last stage's process tree
        self.without = without

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", CHILD_MODULE, str(theirs.fileno()), str(os.getpid()),
               *self.without]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())

    def run(self, name: str, kind: str, params: dict[str, Any], inputs: dict[str, Path],
            out_dir: Path, ctx: Any, plan: dict[str, Any], fix: str) -> dict[str, Any]:
        """Runs one stage in the stage process; returns {peak_rss_gb} of its process tree.

        Raises:
            StageDied: The process died or exited during the stage.
            BaseException: What the stage raised (sent back from the stage process), or the
                runner's own stop (after stopping the stage).
        """
        if self.proc is not None and self.proc.returncode is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:  # it died between stages (nothing of it was in use): start another
                self._reaped(status, usage)
                code = self.proc.returncode
                log.warning("the stage process ended between stages (%s); starting a new one.",
                            f"signal {_signal(-code)}" if code < 0 else f"exit code {code}")
                self._close_conn()
        if self.proc is None or self.proc.returncode is not None:
            self._start()
        request = {"name": name, "kind": kind, "params": params,
                   "inputs": {k: str(v) for k, v in inputs.items()}, "out_dir": str(out_dir),
                   "ctx": {"run_dir": str(ctx.run_dir), "device": ctx.device, "seed": ctx.seed,
                           "show_progress": ctx.show_progress, "threads": ctx.threads},
                   "plan": plan, "fix": fix,
                   "log_level": logging.getLogger().getEffectiveLevel()}
        self.peak = 0
        _reset_peak(self.proc.pid)
        try:
            try:
                self.conn.send(request)
            except OSError:  # it died as the stage was handed over
                self._died(name, kind, plan, fix, ctx.device)
            reply = self._wait(name, kind, plan, fix, ctx.device)
        except StageDied:
            raise
        except BaseException:  # the runner was stopped: stop the stage, then go on stopping
            self._stop()
            raise
        peak = max(self.peak, _hwm(self.proc.pid))
        status, value, *rest = reply
        if status == "error":
            log.debug("%s failed in the stage process:\n%s", name, rest[0] if rest else "")
            raise value
        return {"peak_rss_gb": round(peak / 1e9, 3)}

    def _wait(self, name: str, kind: str, plan: dict[str, Any], fix: str,
              device: str) -> tuple:
        """Relays log records until the stage's reply; samples memory; notices a death."""
        sampled = 0.0
        tree = _Tree(self.proc.pid)
        while True:
            if time.monotonic() - sampled >= SAMPLE_S:
                sampled = time.monotonic()
                self.peak = max(self.peak, tree.rss())
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
                if pid:
                    self._reaped(status, usage)
                    self._died(name, kind, plan, fix, device)
            if not self.conn.poll(SAMPLE_S):
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self._died(name, kind, plan, fix, device)
            if message[0] != "log":
                return message
            _, level, logger, text = message
            logging.getLogger(logger).log(level, "%s", text)

    def _reaped(self, status: int, usage: Any) -> None:
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak = max(self.peak, usage.ru_maxrss * 1024)  # KiB on Linux

    def _died(self, name: str, kind: str, plan: dict[str, Any], fix: str, device: str) -> None:
        """Reaps the dead stage process (its own peak from wait4) and raises StageDied."""
        if self.proc.returncode is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self._reaped(status, usage)
        self._close_conn()
        code = self.proc.returncode
        fields: dict[str, Any] = {"peak_rss_gb": round(self.peak / 1e9, 3), "planned": plan}
        fields.update({"signal": _signal(-code)} if code < 0 else {"exit_code": code})
        raise StageDied(death_message(name, kind, code, self.peak or None, plan, fix, device),
                        fields)

    def _stop(self) -> None:
        """Stops a running stage (SIGTERM: it raises there like Ctrl-C), then ends the process."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # relay what it logs while it stops
                if self.conn.poll(0.1):
                    message = self.conn.recv()
                    if message[0] == "log":
                        logging.getLogger(message[2]).log(message[1], "%s", message[3])
                continue
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_conn()

    def _close_conn(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        """Ends the stage process (after its stages finished): it exits when asked."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self.conn.send(None)
            try:
                self.proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_conn()
        self.proc = None


def _signal(number: int) -> str:
    from llmops.runner.memory import signal_name

    return signal_name(number)


class _Tree:
    """The stage process and its descendants, for sampling their summed resident memory.

    Its descendants (a llama.cpp server, a converter) are looked for every `TREE_EVERY_S`, not
    at every sample: finding them reads the stat file of every process on the host. A child
    started since is counted from the next look.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.procs: list[Any] = []
        self.looked = -TREE_EVERY_S

    def rss(self) -> int:
        """Returns the summed resident memory of the tree now (0 when the process is gone)."""
        import psutil

        now = time.monotonic()
        if now - self.looked >= TREE_EVERY_S:
            self.looked = now
            try:
                root = psutil.Process(self.pid)
                self.procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                self.procs = []
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


def _reset_peak(pid: int) -> None:
    """Resets the kernel's peak-RSS mark of the stage process (Linux), so VmHWM is this stage's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _hwm(pid: int) -> int:
    """Returns the kernel's peak-RSS mark (VmHWM) of a live process in bytes (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
