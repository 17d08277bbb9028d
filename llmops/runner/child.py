"""The stage process: `python -m llmops.runner.child FD PARENT_PID [PACKAGE ...]` runs the stages
the runner hands it; the PACKAGEs (llmops.runner.supervise.unused_packages) stay out of it.

The runner (llmops.runner.supervise) starts one such process per job (or per sweep whose points
run one after another in its process, llmops.runner.shared), at the first stage that is not
cached, and sends it one stage at a time over the connection on file descriptor FD. A
stage's log records go back over the same connection into the runner's logging; its progress
bars and warnings reach the inherited stderr. When this process dies (the kernel's out-of-memory
killer, a crash in native code), the runner, which outlives it, records which stage and why. It
ends without the interpreter's teardown of what the stages imported (`end`).

Messages (pickled, multiprocessing.connection):
    runner -> here: {"kind", "name", "params", "inputs", "out_dir", "ctx", "plan", "fix",
        "log_level"}; None to end.
    here -> runner: ("log", level, logger name, message), then ("done", None) or
        ("error", exception, traceback text).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import pickle
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from llmops.errors import StageError, Terminated
from llmops.runner.memory import is_out_of_memory, oom_message

_PR_SET_PDEATHSIG = 1
#: Young (generation 1) collections between two full ones in a stage or rank process (Python: 10).
#: Importing torch, transformers, peft and TRL makes ~110: 7 full collections of a heap growing
#: to ~0.5M objects at Python's 10 (~1 CPU-s), 1 at 100. A steady training or eval loop frees
#: about what it allocates and triggers few collections of any kind; release_memory makes a
#: full one after every stage.
FULL_EVERY = 100


class _Link:
    """The connection to the runner; sends from any thread (stage threads log too)."""

    def __init__(self, conn: Connection):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: Any) -> None:
        with self.lock:
            self.conn.send(message)


class _Relay(logging.Handler):
    """Sends log records to the runner, which logs them through its own handlers."""

    def __init__(self, link: _Link):
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.send(("log", record.levelno, record.name, record.getMessage()))
        except (OSError, ValueError, TypeError, pickle.PicklingError):
            self.handleError(record)


def host_peak_bytes() -> int:
    """Returns this process's peak resident memory (and its waited-for children's), in bytes."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024  # KiB on Linux


def device_peak_bytes() -> int | None:
    """Returns torch's peak CUDA memory allocated, when torch is loaded and CUDA in use."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def run_stage(request: dict[str, Any]) -> None:
    """Runs one stage as the runner asked; an allocation failure becomes a StageError that says
    the measured peak, what was planned and the fix (llmops.runner.memory)."""
    from llmops.core.context import StageContext
    from llmops.runner import dispatch

    kind = request["kind"]
    c = request["ctx"]
    ctx = StageContext(run_dir=Path(c["run_dir"]), device=c["device"], seed=c["seed"],
                       logger=logging.getLogger(f"llmops.stage.{kind}"),
                       show_progress=c["show_progress"], threads=c["threads"])
    module = dispatch.stage(kind)
    inputs = {k: Path(v) for k, v in request["inputs"].items()}
    try:
        module.run(request["params"], inputs, Path(request["out_dir"]), ctx)
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        message = oom_message(request["name"], kind, exc, host_peak_bytes(), device_peak_bytes(),
                              request["plan"], request["fix"], c["device"])
        del exc  # its frames hold the memory
        raise StageError(message) from None


def rare_full_collections() -> None:
    """Makes the collector's full collections rare in this process (`FULL_EVERY`), as the CLI
    does during its pre-flight; young ones run as before."""
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, max(gen2, FULL_EVERY))


def release_memory() -> None:
    """Gives back what a finished stage left before the next stage of this process runs.

    A stage's model, optimizer and trainer are garbage once its run returns, but some sit in
    reference cycles (the Trainer and its callbacks) until the collector runs, torch keeps freed
    CUDA blocks cached, and glibc keeps freed heap pages mapped; all three would count against
    the next stage, whose memory plan assumes a process that holds only its imports
    (llmops.planning.stage_memory).

    What survives the collection (the modules a stage imported, their caches) lives as long as
    the process: it is frozen (gc.freeze), so that no later collection, in the next stage or
    here after it, walks it again (a full collection of torch + transformers + TRL's ~0.5M
    objects costs ~0.3 CPU-s). A stage's own garbage is always younger, and collected as before.
    """
    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    """Returns glibc's free heap pages (main arena and thread arenas) to the kernel; nothing
    where the C library is not glibc."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if not name:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):  # glibc only (musl has none)
        libc.malloc_trim(0)


def _portable(exc: BaseException) -> BaseException:
    """Returns the exception if it survives pickling as itself, else a StageError saying it."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc) and str(copy) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - any failure to pickle means: send a plain copy
        pass
    return StageError(f"{type(exc).__name__}: {exc}")


def _on_term(signum: int, frame: Any) -> None:
    """SIGTERM (the runner stopping the job) stops the stage like Ctrl-C, once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def serve(conn: Connection) -> int:
    """Runs stages until the runner sends None or goes away; returns the exit code."""
    link = _Link(conn)
    root = logging.getLogger()
    root.handlers[:] = [_Relay(link)]
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return 0
        if request is None:
            return 0
        root.setLevel(request["log_level"])
        signal.signal(signal.SIGTERM, _on_term)
        try:
            run_stage(request)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the runner
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            text = "".join(traceback.format_exception(exc))
            link.send(("error", _portable(exc), text))
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                return 0
        else:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            link.send(("done", None))
        release_memory()


def _die_with_parent() -> None:
    """Asks Linux to send SIGTERM here when the runner dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def keep_out(packages: list[str]) -> None:
    """Makes each package unimportable in this process, as if it were not installed: `import`
    raises ModuleNotFoundError and `importlib.util.find_spec` returns None (a None entry in
    sys.modules, Python's documented way to block an import). One already imported stays."""
    for name in packages:
        sys.modules.setdefault(name, None)


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m llmops.runner.child FD PARENT_PID [PACKAGE ...]`."""
    argv = sys.argv[1:] if argv is None else argv
    fd, parent = int(argv[0]), int(argv[1])
    keep_out(argv[2:])
    rare_full_collections()
    # Ctrl-C reaches the whole process group; the runner stops this process (SIGTERM), so the
    # stage stops once, in order. A Python handler, not SIG_IGN, so that it is not inherited.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    # SLURM's time-limit warning (submitit's requeue signal) may reach every process of the job;
    # the runner's submitit handler requeues and stops this process.
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until a stage runs
    _die_with_parent()
    if os.getppid() != parent:  # the runner died before we could follow it
        return 1
    return serve(Connection(fd))


def end(code: int) -> None:
    """Ends this process without the interpreter's teardown, once the runner has every stage's
    reply: the atexit hooks run (logging's flush, multiprocessing's, weakref finalizers such as
    temporary folders) and stdio is flushed, but the finalization of every module and object
    that torch, transformers, peft and TRL left (~4,000 modules, ~0.15 CPU-s) is skipped, as
    is waiting for threads a library left running."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    end(main())
