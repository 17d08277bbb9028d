"""Shared fixtures: config composition, compiled stage params, and the tiny model and data built
once per session.

Stage tests take their params from a compiled plan (`stage_params`), so they exercise exactly what
a run passes and restate no default. Tests marked `gpu` skip cleanly when torch sees no CUDA GPU
(`python -m pytest -m gpu` selects them).

The suite runs on pytest-xdist (setup.cfg: `-n auto`). Session fixtures that build something
(the tiny base, the real-vocabulary models) build it once for all workers, in a folder they share,
under a file lock (`_built_once`). A test that uses a module-scoped fixture runs on the same worker
as the rest of its module, and the tests of the one default run and its chain share a worker too
(`pytest_xdist_make_scheduler`), so nothing is built twice.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # One core per worker: torch's default would start a thread per CPU in every worker.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_JSONL = REPO / "llmops" / "data" / "samples" / "tasks_chat.jsonl"

# A quick pre-training of the tiny base: the tests check mechanics, not accuracy.
QUICK_PRETRAIN = (
    "model.pretrain.n_examples=200", "model.pretrain.steps=30", "model.pretrain.batch_size=8",
    "model.pretrain.learning_rate=3e-3", "model.pretrain.legacy_tools=[]",
)


def _compile(overrides: list[str]):
    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.hydra.compose import compose
    from llmops.config.validate import validate_and_resolve

    cfg, resolved = validate_and_resolve(to_plain(compose(overrides)))
    return cfg, compile_plan(cfg, resolved)


# Fixtures whose tests share one xdist worker: the default run and the chain built on its store.
CHAIN_FIXTURES = ("default_run", "chain_run")
# Where each worker leaves its groups for the scheduler: <the session's basetemp>/GROUPS.<id>.json.
GROUPS = "xdist_groups"


def _group(item: pytest.Item) -> str | None:
    """The xdist group of a test: "chain" for the default run's tests, its module for a test that
    uses a module- or class-scoped fixture (built once per module), else None (any worker)."""
    if any(name in item.fixturenames for name in CHAIN_FIXTURES):
        return "chain"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d.scope in ("module", "class", "package") for ds in defs for d in ds):
        return item.module.__name__ if item.module is not None else None
    return None


def _weight(item: pytest.Item) -> int:
    """A test's rough cost for ordering: `slow` tests (~30 s and more) first."""
    return 30 if item.get_closest_marker("slow") is not None else 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: orders the tests costliest group first (--no-loadscope-reorder keeps
    this order) and leaves each test's group for the scheduler (pytest_xdist_make_scheduler)."""
    if not hasattr(config, "workerinput"):
        return
    units: dict[str, list[pytest.Item]] = {}
    groups: dict[str, str] = {}
    for item in items:
        group = _group(item)
        if group is not None:
            groups[item.nodeid] = group
        units.setdefault(group or item.nodeid, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(map(_weight, unit)))
    items[:] = [item for unit in ordered for item in unit]
    folder = config._tmp_path_factory.getbasetemp().parent
    name = f"{GROUPS}.{config.workerinput['workerid']}.json"
    (folder / f".{name}").write_text(json.dumps(groups), encoding="utf-8")
    os.replace(folder / f".{name}", folder / name)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's loadscope scheduling over this suite's groups: a test of a group runs on the
    worker that runs the rest of it; any other test is its own unit (any worker).

    (xdist's own `--dist loadgroup` renames the tests' node ids, which pytest 9 no longer lets it
    do, so the groups come from the workers' collection through a file.)
    """
    from xdist.scheduler import LoadScopeScheduling

    folder = config._tmp_path_factory.getbasetemp()

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked once every worker has collected
                files = sorted(folder.glob(f"{GROUPS}.*.json"))
                self.groups = json.loads(files[0].read_text("utf-8")) if files else {}
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this session that every xdist worker sees (the basetemp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


def _built_once(shared: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Returns shared/name, built by `build(folder)` by the first worker that asks; the others
    wait on the lock and reuse it."""
    from filelock import FileLock

    out = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (shared / f"{name}.done").is_file():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            build(out)
            (shared / f"{name}.done").touch()
    return out


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skips tests marked `gpu` unless torch sees a CUDA GPU (torch is imported only then)."""
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        pytest.skip("gpu test: torch.cuda.is_available() is False on this machine")


@pytest.fixture
def compose_plan():
    """Returns a function: overrides -> (validated AppConfig, Plan)."""
    return _compile


@pytest.fixture(scope="session")
def stage_params() -> Callable[..., dict[str, Any]]:
    """Returns a function: (stage, *overrides, hardware="cpu") -> that stage's compiled params.

    The params are a deep copy, so a test may add keys (e.g. train.resume_dir) or break them.
    """

    def _params(stage: str, *overrides: str, hardware: str = "cpu") -> dict[str, Any]:
        _, plan = _compile([f"hardware={hardware}", *overrides])
        return copy.deepcopy(plan.stage(stage).params)

    return _params


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, stage_params) -> Path:
    """Returns the folder of a tiny base model built by the base stage from compiled params."""
    from llmops.core.context import StageContext
    from llmops.stages import tiny_base as base_stage

    def build(out: Path) -> None:
        ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test"))
        base_stage.run(stage_params("base", *QUICK_PRETRAIN), {}, out, ctx)

    return _built_once(_shared_dir(tmp_path_factory), "tiny_base", build)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    """Returns a data folder (train.jsonl 160 rows, val.jsonl 16 rows, all tools)."""
    from llmops.data import task_api
    from llmops.files import write_jsonl

    out = tmp_path_factory.mktemp("sft_data")
    rows = task_api.generate(176, seed=3)
    write_jsonl(out / "train.jsonl", rows[:160])
    write_jsonl(out / "val.jsonl", rows[160:])
    return out


@pytest.fixture(scope="session")
def real_model(request, tmp_path_factory) -> Callable[[str], Path]:
    """Returns a function: family ("qwen2" | "llama") -> a small saved HF model folder on that
    family's real vocabulary and chat template (tests/real_models.py).

    The folders are cached in .pytest_cache/d/real-models (in the session's shared folder when
    the cache plugin is off), so only the first session pays the ~15 s per family of converting a
    GGUF vocab; xdist workers build each family once, under a file lock. Without
    `python -m llmops.gguf_setup` the test skips with that command as the reason, unless
    LLMOPS_REQUIRE_GGUF=1 (CI), where it fails.
    """
    from filelock import FileLock
    from real_models import build_real_model, vocab_path

    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir("real-models"))
    else:
        cache = _shared_dir(tmp_path_factory) / "real-models"
        cache.mkdir(exist_ok=True)

    def _get(family: str) -> Path:
        if vocab_path(family) is None:
            reason = f"{family} vocab GGUF not set up; run: python -m llmops.gguf_setup"
            if os.environ.get("LLMOPS_REQUIRE_GGUF") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        with FileLock(str(cache / f"{family}.lock")):
            return build_real_model(family, cache)

    return _get


@pytest.fixture(scope="session")
def real_tokenizer(real_model) -> Callable[[str], Any]:
    """Returns a function: family -> its tokenizer (the `real_model` folder's), loaded once per
    worker (a real vocabulary costs ~1.5 CPU-s to load); tests only read it."""
    from transformers import AutoTokenizer

    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            loaded[family] = AutoTokenizer.from_pretrained(real_model(family))
        return loaded[family]

    return get


# What a seed job runs besides the test's overrides: the base (and data) only.
SEED_ONLY = ("train=none", "eval=none", "deploy=none", "usecase=none", "progress=false")


@pytest.fixture(scope="session")
def seed_store(tmp_path_factory) -> Callable[..., Path]:
    """Returns a function: (store, *overrides, stages=("base",), source=None) -> store, which
    copies into `store` the finished entries of those stages of the plan `python -m llmops
    *overrides` compiles, so a test's fresh store starts with them cached.

    For a test whose behaviour is downstream of the tiny base (training, gates, sweeps of sft):
    the base is pre-trained once per fingerprint for the whole session (every xdist worker,
    under a file lock) instead of once per test. The entries come from `source` (a store that
    holds them, e.g. default_run's) or from a session seed store, built there by `python -m
    llmops *overrides train=none eval=none deploy=none`. The copies are the runner's own entries
    (content-addressed by fingerprint), so the test's run finds them as a rerun would. A test
    that checks a stage *running* must not seed it.
    """
    import subprocess
    import sys

    from llmops.store.cas import Store

    shared = _shared_dir(tmp_path_factory)

    def _seed(store: Path, *overrides: str, stages: tuple[str, ...] = ("base",),
              source: Path | None = None) -> Path:
        _, plan = _compile(list(overrides))
        specs = [plan.stage(name) for name in stages]
        if source is None:
            key = "-".join(spec.fingerprint[:12] for spec in specs)

            def build(out: Path) -> None:
                r = subprocess.run([sys.executable, "-m", "llmops", *overrides, *SEED_ONLY,
                                    f"store_dir={out / 'store'}",
                                    f"hydra.run.dir={out / 'run'}"], cwd=out,
                                   env=_llmops_env(OMP_NUM_THREADS="1"), capture_output=True,
                                   text=True, timeout=900)
                assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

            source = _built_once(shared, f"seed-{key}", build) / "store"
        src, dst = Store(source), Store(store)
        for spec in specs:
            entry = src.lookup(spec)
            assert entry is not None, f"{source} holds no {spec.kind} entry {spec.fingerprint}"
            if dst.lookup(spec) is None:
                shutil.copytree(entry, dst.entry(spec))
        return store

    return _seed


def _llmops_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra}


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> dict[str, Any]:
    """Runs `python -m llmops` exactly as README writes it, once per session, in a fresh folder
    whose store is outputs/store; returns {root, store, result (the CompletedProcess)}.

    test_cli checks this run; chain_run builds on its store (same base ... export fingerprints).
    """
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("default_run")
    result = subprocess.run([sys.executable, "-m", "llmops"], cwd=root, env=_llmops_env(),
                            capture_output=True, text=True, timeout=900)
    return {"root": root, "store": root / "outputs" / "store", "result": result}


@pytest.fixture(scope="session")
def chain_run(tmp_path_factory, default_run) -> dict[str, Path]:
    """Runs issue 15's whole chain once, `python -m llmops deploy=openai monitor=default
    release=default` on the tiny default in a fresh folder, on the default run's store (its base
    to export are reused: the chain runs compute, gguf, deploy, monitor and release); returns its
    folders (root, store, run). The deploy, monitor and release tests share it. Its gguf stage
    writes q8_0 besides the served f16 (deploy.gguf.quantization=[f16,q8_0]), so test_deploy's
    conversion test checks both files' parity here instead of converting a model of its own."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("chain_run")
    store = default_run["store"]
    env = _llmops_env(OMP_NUM_THREADS="1", LLMOPS_STORE=str(store))
    r = subprocess.run([sys.executable, "-m", "llmops", "deploy=openai", "monitor=default",
                        "release=default", "deploy.gguf.quantization=[f16,q8_0]"], cwd=root,
                       env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return {"root": root, "store": store, "run": next(root.glob("outputs/runs/*/*"))}


def _llmops_once(tmp_path_factory: pytest.TempPathFactory, name: str,
                 runs: dict[str, list[str]], timeout: int = 600,
                 before: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Runs `python -m llmops ARGS` for each named run, in order, once per session for every
    xdist worker (in the session's shared folder, under a file lock); "{root}" in an argument is
    that folder; `before(folder)` runs first (e.g. seeds a store). Returns {"root": the folder,
    NAME: its CompletedProcess}."""
    import subprocess
    import sys

    env = {k: v for k, v in _llmops_env(TRANSFORMERS_OFFLINE="1").items() if k != "LLMOPS_STORE"}

    def build(root: Path) -> None:
        if before is not None:
            before(root)
        results = {}
        for run, args in runs.items():
            r = subprocess.run([sys.executable, "-m", "llmops",
                                *(a.replace("{root}", str(root)) for a in args)],
                               cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
            results[run] = {"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
        (root / "results.json").write_text(json.dumps(results), encoding="utf-8")

    root = _built_once(_shared_dir(tmp_path_factory), name, build)
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    return {"root": root, **{run: subprocess.CompletedProcess(runs[run], **r)
                             for run, r in results.items()}}


# A tiny sweep point: 10 SFT steps, 200 rows, 20 eval rows (test_sweeps' TINY).
SWEEP_TINY = ["train.max_steps=10", "data.n_examples=200", "model.pretrain.steps=20",
              "eval.limit=20", "progress=false"]


# test_gates' small tiny-default run: a sweep point of rank_lr_sweep's (lora r8, the learning rate
# 0.005) whose gates are set. Only the accuracy gate differs between its runs; the other gates
# are made reachable.
GATE_SMALL = ["usecase=none", "lora=r8", *SWEEP_TINY, "eval.gates.format.threshold=0",
              "eval.gates.safety.threshold=0", "eval.gates.no_regression.tolerance=1"]


@pytest.fixture(scope="session")
def gate_runs(tmp_path_factory, seed_store, rank_lr_sweep) -> dict[str, Any]:
    """Three small runs on one store, once per session: `fail` (accuracy gate 0.99: exit 3 before
    export), `pass` (threshold 0) and `record` (0.99 with eval.enforce=false); each run folder is
    root/NAME. The store starts with rank_lr_sweep's base, data, eval_base and sft entries (the
    same fingerprints), so the runs evaluate (and export) only. test_gates checks them; the report
    test opens fail's report."""
    small = [*GATE_SMALL, "store_dir={root}/store"]

    def seed(root: Path) -> None:
        seed_store(root / "store", *GATE_SMALL, stages=("base", "data", "eval_base", "sft"),
                   source=rank_lr_sweep["root"] / "outputs" / "store")

    return _llmops_once(tmp_path_factory, "gate_runs", {
        "fail": [*small, "hydra.run.dir={root}/fail", "eval.gates.accuracy.threshold=0.99"],
        "pass": [*small, "hydra.run.dir={root}/pass", "eval.gates.accuracy.threshold=0.0"],
        "record": [*small, "hydra.run.dir={root}/record",
                   "eval.gates.accuracy.threshold=0.99", "eval.enforce=false"],
    }, before=seed)


@pytest.fixture(scope="session")
def rank_lr_sweep(tmp_path_factory) -> dict[str, Any]:
    """`python -m llmops sweeps=rank_lr lora=r8 ... hydra.sweep.dir=ROOT/sweep` (2 points: the
    learning rate 0.002, 0.005) once per session; returns {root, result, sweep (its multirun
    folder)}. test_sweeps checks the run, tests/compare compares (copies of) it, the report test
    opens its report. Tests that write into the sweep folder work on a copy."""
    out = _llmops_once(tmp_path_factory, "rank_lr_sweep", {
        "result": ["sweeps=rank_lr", "lora=r8", *SWEEP_TINY, "eval.enforce=false",
                   "hydra.sweep.dir={root}/sweep"]}, timeout=300)
    return {**out, "sweep": out["root"] / "sweep"}
