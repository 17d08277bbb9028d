"""Each stage's planned peak memory against its measured peak, on this machine.

    python benchmarks/stage_memory.py [--only tiny,qwen2,llama,qwen3] [--cap-gb 8]

Runs the whole chain (python -m llmops) once per model, in a child process with a fresh store,
so every stage runs: the tiny default (data=task_api), and model=hub on small Qwen2, Llama 3 and
Qwen3-template models on their real vocabularies (tests/real_models.py; Qwen3: Qwen3Config +
the Qwen2 vocabulary + its added tokens + TRL's qwen3.jinja) with tool-calling rows at the length
limit (data.max_length) and the default batch sizes, train.max_steps=2, eval.limit small,
deploy=openai.

Measured in the job's stage process (llmops.runner.child, which this module stands in for): on a
CPU the stage's own peak resident set (the kernel's VmHWM, reset before the stage through
/proc/self/clear_refs, read after it; its resident set at the start beside it) and the peak of
the child processes it started (llama.cpp's converter and server: sampled every 50 ms, see
_Sampler); on a GPU torch.cuda.max_memory_allocated (reset per stage). The estimate is
compute_plan.json's `stages` (llmops.planning.stage_memory).
A watchdog kills a child whose memory passes --cap-gb and reports the stage it was in.
Prints: stage, estimate GB, measured GB, ratio (measured / estimate); target 0.8-1.25.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

#: Where the stage process writes its measurements (set by the runner side, _measure_child).
_OUT_ENV = "LLMOPS_BENCH_STAGE_MEMORY"

FILLER = ("please keep a careful record of every task that the team has planned for the next "
          "release and note who owns each one and when it is due ")


def _rows(n: int, words: int) -> list[dict]:
    """Tool-calling chat rows of about `words` words (~1 token each on BPE vocabularies)."""
    tools = [{"type": "function", "function": {
        "name": "create_task", "description": "Create a task",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}},
                       "required": ["title"]}}}]
    body = (FILLER * (words // len(FILLER.split()) + 1)).split()[:words]
    out = []
    for i in range(n):
        call = {"id": f"c{i}", "type": "function", "function": {
            "name": "create_task", "arguments": json.dumps({"title": f"task {i}"})}}
        out.append({"messages": [
            {"role": "user", "content": f"row {i}: " + " ".join(body)},
            {"role": "assistant", "content": None, "tool_calls": [call]}], "tools": tools})
    return out


class _Sampler(threading.Thread):
    """Samples the resident memory of this process's children (llama.cpp's converter, the
    server) every 50 ms: their peak, and the peak of this process and them together.

    Not RUSAGE_CHILDREN: Linux carries the parent's resident set at the fork into the child's
    ru_maxrss (exec keeps the old mm's high-water mark), so a small server started by a large
    stage process reads as large as its parent."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.kids = self.tree = 0

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.05):
            kids = 0
            for p in me.children(recursive=True):
                try:
                    kids += p.memory_info().rss
                except psutil.Error:
                    pass
            self.kids = max(self.kids, kids)
            self.tree = max(self.tree, kids + me.memory_info().rss)


def _measure_stages(out: Path, argv: list[str]) -> int:
    """The job's stage process (llmops.runner.child) with every stage's run wrapped to record
    its peak into `out` (the runner starts this module in its place, see _measure_child)."""
    import llmops.runner.child as child

    orig = child.run_stage

    def status_kb(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def run_measured(request: dict) -> None:
        kind = request["kind"]
        cuda = request["ctx"]["device"].startswith("cuda")
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        Path("/proc/self/clear_refs").write_text("5")
        rss0 = status_kb("VmRSS")
        sampler = _Sampler()
        sampler.start()
        t0 = time.perf_counter()
        try:
            return orig(request)
        finally:
            sampler.stop.set()
            sampler.join()
            rec = {"rss_gb": status_kb("VmHWM") / 2**20, "start_gb": rss0 / 2**20,
                   "children_gb": sampler.kids / 2**30, "tree_gb": sampler.tree / 2**30,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if cuda:
                import torch

                rec["cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
            # A rerun on the same store (--work) measures only the stages that run again.
            results = json.loads(out.read_text()) if out.is_file() else {}
            results[kind] = rec
            out.write_text(json.dumps(results))

    child.run_stage = run_measured
    return child.main(argv)


def _measure_child(out: Path, overrides: list[str]) -> None:
    """Runs llmops in this process (the runner); its stage process is this module in
    _measure_stages's role, which records each stage's peak."""
    import llmops.runner.supervise as supervise

    os.environ[_OUT_ENV] = str(out)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p)
    supervise.CHILD_MODULE = Path(__file__).stem
    from llmops.cli import main

    try:
        main(overrides)
    except SystemExit as e:
        results = json.loads(out.read_text()) if out.is_file() else {}
        results["_exit"] = {"code": e.code}
        out.write_text(json.dumps(results))


def _estimates(overrides: list[str]) -> dict:
    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.hydra.compose import compose
    from llmops.config.validate import validate_and_resolve
    from llmops.env import detect
    from llmops.stages.compute import plan as compute_plan

    app, resolved = validate_and_resolve(to_plain(compose(overrides)), detect())
    plan = compile_plan(app, resolved)
    return compute_plan(plan.stage("compute").params)["stages"]


def _watch(proc: subprocess.Popen, cap_gb: float, state: dict) -> None:
    import psutil

    while proc.poll() is None:
        try:
            p = psutil.Process(proc.pid)
            rss = sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**30
        except psutil.Error:
            break
        state["max"] = max(state.get("max", 0.0), rss)
        if rss > cap_gb:
            state["killed"] = rss
            proc.kill()
            break
        time.sleep(0.2)


def run_case(name: str, overrides: list[str], work: Path, cap_gb: float) -> None:
    """Runs one chain in a child process and prints its table."""
    out = work / f"{name}.json"
    ov = _case_overrides(name, overrides, work)
    (work / f"{name}.args.json").write_text(json.dumps(ov))
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(out), *ov],
                            cwd=str(work), env={**os.environ, "WANDB_MODE": "disabled"})
    state: dict = {}
    watcher = threading.Thread(target=_watch, args=(proc, cap_gb, state), daemon=True)
    watcher.start()
    proc.wait()
    watcher.join(timeout=5)
    killed = f", killed over {state['killed']:.1f} GB" if "killed" in state else ""
    report(name, overrides, work, f"exit {proc.returncode}{killed}")


def _case_overrides(name: str, overrides: list[str], work: Path) -> list[str]:
    return [*overrides, f"store_dir={work / ('store-' + name)}",
            f"hydra.run.dir={work / ('run-' + name)}"]


def report(name: str, overrides: list[str], work: Path, status: str = "") -> None:
    """Prints one case's table: the plan's estimate (computed now) against what was measured."""
    est = _estimates(_case_overrides(name, overrides, work))
    out = work / f"{name}.json"
    got = json.loads(out.read_text()) if out.is_file() else {}
    print(f"\n== {name}: {' '.join(overrides)} ({status})")
    print(f"{'stage':10} {'estimate GB':>11} {'measured GB':>11} {'ratio':>6}  where")
    for stage, e in est.items():
        m = got.get(stage)
        if m is None:
            print(f"{stage:10} {e['host_gb'] if e['on'] == 'host' else e['device_gb']:11.2f} "
                  f"{'-':>11} {'-':>6}  did not run")
            continue
        gb = e["device_gb"] if e["on"] == "device" and "cuda_gb" in m else e["host_gb"]
        # deploy's server runs beside the stage process: both count (sampled together; an
        # earlier run's record without tree_gb: the sum of the two peaks); elsewhere a child
        # runs while the stage process waits, so the larger of the two is the stage's peak.
        if stage == "deploy":
            both = max(m["rss_gb"], m["tree_gb"]) if "tree_gb" in m else \
                m["rss_gb"] + m["children_gb"]
        else:
            both = max(m["rss_gb"], m["children_gb"])
        meas = m.get("cuda_gb") if e["on"] == "device" and "cuda_gb" in m else both
        print(f"{stage:10} {gb:11.2f} {meas:11.2f} {meas / gb:6.2f}  "
              f"stage {m['rss_gb']:.2f} GB (from {m.get('start_gb', 0):.2f}), "
              f"children {m['children_gb']:.2f} GB, "
              + (f"together {m['tree_gb']:.2f} GB, " if "tree_gb" in m else "")
              + f"{m['seconds']} s")
    sys.stdout.flush()


def main() -> None:
    if os.environ.get(_OUT_ENV) and len(sys.argv) >= 3 and sys.argv[1].isdigit():
        sys.exit(_measure_stages(Path(os.environ[_OUT_ENV]), sys.argv[1:]))
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _measure_child(Path(sys.argv[2]), sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="tiny,qwen2,llama,qwen3")
    ap.add_argument("--cap-gb", type=float, default=8.0)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--report", type=Path, default=None,
                    help="print the tables of an earlier run's folder with today's estimates")
    ap.add_argument("--work", type=Path, default=None,
                    help="rerun in an earlier run's folder: its stores serve the stages that "
                         "finished, so only the others run and are measured")
    ap.add_argument("--margin", type=int, default=260,
                    help="tokens of template, tools and call beside the filler words")
    args = ap.parse_args()
    import real_models

    work = args.report or args.work or Path(tempfile.mkdtemp(prefix="stage_memory-"))
    cache = Path(os.environ.get("LLMOPS_CACHE", Path.home() / ".cache" / "llmops")) / "bench"
    data = work / "rows.jsonl"
    if not data.is_file():
        rows = _rows(args.rows, args.length - args.margin)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # eval.enforce=false, deploy.allow_failed_gates=true: two steps do not pass the gates, and
    # export, gguf and deploy must run.
    common = ["train.max_steps=2", "eval.limit=8", "eval.enforce=false", "deploy=openai",
              "deploy.allow_failed_gates=true", "progress=false"]
    hub = ["data=files", f"data.path={data}", f"data.max_length={args.length}",
           f"train.max_length={args.length}", "model=hub"]
    cases = {"tiny": common}
    for fam in ("qwen2", "llama", "qwen3"):
        cases[fam] = [*hub, f"model.hub_id={real_models.build_real_model(fam, cache)}", *common]
    for name in args.only.split(","):
        if args.report:
            report(name, cases[name], work, "measured earlier")
        else:
            run_case(name, cases[name], work, args.cap_gb)


if __name__ == "__main__":
    main()
