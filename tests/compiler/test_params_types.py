"""Every stage's compiled params match its declared type exactly (llmops.compiler.builders).

Each stage kind's builder module holds its params type (`<Kind>Params`, a TypedDict) and its
stage module's `run` declares it. Here pydantic checks the params of every stage of every plan
against that type, strictly and with extra keys forbidden: no key missing, no key extra, every
value of its type. The plans: every option file of every group (one override on the default, on a
CPU and on a faked H100, as tests/config/test_resolve.py fakes it), the combos that add the stages
and keys one override cannot (sft_dpo, ddp, lm_eval, ollama/openai with monitor and release, nf4
on a GPU, a local hub model folder, a data file, a template file, train.backend=openai).

Each option also composes, validates and compiles as it would run on this machine (with what it
needs besides itself, e.g. a data path or dry_run=true for a GPU profile), and that plan's params
are checked too. The module is one xdist unit (its fixture `plan_of` is module-scoped), so its tests
share this process's compositions (compose() memoises them by overrides): an option's plans on both
machines and on this one compose once when their overrides agree, and the combos once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from llmops.cli import to_plain
from llmops.compiler.compile import BUILDERS, compile_plan
from llmops.config.hydra.compose import compose
from llmops.config.validate import validate_and_resolve
from llmops.core.plan import STAGE_ORDER, stage_module
from llmops.data import samples_dir
from llmops.env import Environment, Gpu
from llmops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
HUB_DIR = REPO / "tests" / "data" / "Qwen2.5-0.5B-Instruct"
DATA_FILE = REPO / "tests" / "data" / "openai_tools.jsonl"
SAMPLE_JSONL = samples_dir() / "tasks_chat.jsonl"

PKGS = frozenset({"bitsandbytes", "wandb", "lm_eval", "llama_cpp"})
ENVS = {
    "cpu": Environment(cpu_count=2, memory_gb=15.6, installed=PKGS),
    # deepspeed too, so distributed=deepspeed_zero2/3 compile here
    "h100": Environment(gpus=(Gpu("NVIDIA H100 80GB HBM3", 79.6),), cpu_count=16,
                        memory_gb=128.0, installed=PKGS | {"deepspeed"}),
}
# Hydra's own group (launchers) holds no options of a plan.
NOT_OPTIONS = {"hydra"}
GROUP_OPTIONS = [(group.name, option.stem)
                 for group in sorted(p for p in CONF.iterdir() if p.is_dir())
                 if group.name not in NOT_OPTIONS
                 for option in sorted(group.glob("*.yaml")) if not option.name.startswith("_")]
# What an option needs besides itself to make a composition that runs (or, for GPUs, plans) here.
NEEDS = {
    ("data", "jsonl"): [f"data.path={SAMPLE_JSONL}"],
    ("data", "files"): [f"data.path={SAMPLE_JSONL}"],
    ("data", "hf"): ["data.hf_id=org/dataset"],
    ("model", "hub"): [f"model.hub_id={HUB_DIR}"],
    # GGUF serving targets need llmops[gguf] to run; planning them does not.
    ("deploy", "ollama"): ["dry_run=true"],
    ("deploy", "openai"): ["dry_run=true"],
    # DeepSpeed needs CUDA GPUs and llmops[deepspeed] to run; planning it for a GPU node does not.
    ("distributed", "deepspeed_zero2"): ["dry_run=true", "hardware=8xa100_80g"],
    ("distributed", "deepspeed_zero3"): ["dry_run=true", "hardware=8xa100_80g"],
    # FSDP shards over GPUs only (accelerate runs it as DDP on a CPU); planning it for them works.
    ("distributed", "fsdp"): ["dry_run=true", "hardware=8xa100_80g"],
}
ALL_STAGES = ("train=sft_dpo", "distributed=ddp", "eval=lm_eval", "deploy=ollama",
              "merge=ties", "monitor=default", "release=default")
OPENAI = ("deploy=openai", "monitor=default", "release=default", "deploy.keep_serving=true")
HUB = ("model=hub", f"model.hub_id={HUB_DIR}", "distributed=ddp", "train=sft_dpo",
       "train.dpo.batch_size=1")
FILES = ("data=files", f"data.path={DATA_FILE}", "usecase=none")
# The reference-free preference stages, one in each plan (a plan runs one method).
ORPO = ("train=sft_orpo", "distributed=ddp", "train.orpo.batch_size=1", "merge=ties")
KTO = ("train=sft_kto", "train.kto.batch_size=4")
GRPO = ("train=sft_grpo", "train.grpo.batch_size=8", "distributed=ddp")
SIMPO = ("train=simpo", "data.preference_path=" + str(REPO / "tests" / "data" / "pairs.jsonl"))
COMBOS = [
    ("train=sft_dpo",), ("train=dpo",), ("distributed=ddp",), ("eval=lm_eval",),
    ("deploy=ollama",), ("deploy=ollama", "monitor=default", "release=default"),
    OPENAI, ALL_STAGES, HUB, FILES, ORPO, SIMPO, KTO, GRPO,
    ("model=qwen1.5b", "quant=nf4"),
    ("data=jsonl", f"data.path={DATA_FILE}"), ("data=hf", "data.hf_id=org/name"),
    ("model=llama8b", "hardware=8xh100", "distributed=fsdp", "dry_run=true"),
    ("train=none", "usecase=task_api"),
    ("train.backend=openai", "train.openai.upload_consent=true", "monitor=default",
     "release=default"),
]
CASES = [(env, combo) for env in ENVS for combo in COMBOS]


def params_type(kind: str) -> Any:
    """Returns a stage kind's params type: `<Kind>Params` of its builder's module."""
    module = sys.modules[BUILDERS[kind].__module__]
    return getattr(module, "".join(p.capitalize() for p in kind.split("_")) + "Params")


def _exact(tp: Any) -> TypeAdapter:
    # The config reaches every nested TypedDict that sets none of its own.
    @with_config(ConfigDict(extra="forbid", strict=True))
    class Exact(TypedDict):
        params: tp  # type: ignore[valid-type]

    return TypeAdapter(Exact)


CHECKERS = {kind: _exact(params_type(kind)) for kind in STAGE_ORDER}


def check(kind: str, params: dict[str, Any]) -> None:
    """Raises ValidationError unless params are exactly of kind's params type."""
    CHECKERS[kind].validate_python({"params": params})


def check_plan(plan) -> None:
    """Raises ValidationError unless every stage's params are exactly of its kind's type."""
    for stage in plan.stages:
        check(stage.kind, stage.params)


def _plan(env: str, overrides: tuple[str, ...]):
    return compile_plan(*validate_and_resolve(to_plain(compose(list(overrides))), ENVS[env]))


@pytest.fixture(scope="module")
def plan_of():
    """Returns _plan: (env, overrides) -> Plan. Module-scoped, so that this module's tests run in
    one process and share its compositions (see the module's docstring)."""
    return _plan


def _runnable(group: str, option: str) -> list[str]:
    """The option with what it needs (NEEDS) to compose, validate and compile on this machine."""
    overrides = [f"{group}={option}", *NEEDS.get((group, option), [])]
    # GPU hardware profiles and GPU-sized models are planned, not run, on this machine.
    if group in ("hardware", "model") and option not in ("auto", "cpu", "tiny"):
        overrides.append("dry_run=true")
    if group == "model" and option != "tiny":
        overrides.append("hardware=a100_80g")
    return overrides


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS,
                         ids=[f"{group}={option}" for group, option in GROUP_OPTIONS])
def test_every_option_composes_validates_and_compiles_to_params_of_their_types(
        plan_of, compose_plan, group, option):
    # The option alone on the default, on each machine. It may be a config error (model=hub needs
    # hub_id, data=files a path, a GPU profile on a CPU, a model too large for it): then that
    # machine has no plan to check, and the runnable composition below and the combos cover it.
    for env in ENVS:
        try:
            plan = plan_of(env, (f"{group}={option}",))
        except ConfigError:
            continue
        check_plan(plan)
    # As it runs on this machine (detected, not faked), with what it needs: it must compile.
    cfg, plan = compose_plan(_runnable(group, option))
    check_plan(plan)
    assert plan.stages, "a plan has at least one stage"
    names = [s.name for s in plan.stages]
    assert "data" in names
    if group == "model":
        assert cfg.model.name == (HUB_DIR.name if option == "hub" else option)
        assert ("base" in names) == (option == "tiny")
    fps = [s.fingerprint for s in plan.stages]
    assert len(set(fps)) == len(fps)


@pytest.mark.parametrize(("env", "overrides"), CASES,
                         ids=[f"{env}-{'+'.join(o)}" for env, o in CASES])
def test_every_stage_params_are_exactly_of_the_declared_type(plan_of, env, overrides):
    check_plan(plan_of(env, overrides))


def test_the_cases_reach_every_stage_kind_and_key(plan_of):
    plans = [plan_of(env, combo) for env, combo in
             [("cpu", ALL_STAGES), ("h100", OPENAI), ("cpu", HUB), ("cpu", FILES),
              ("cpu", ORPO), ("cpu", SIMPO), ("cpu", KTO),
              ("cpu", GRPO)]]
    kinds = {s.kind for p in plans for s in p.stages}
    assert kinds == set(STAGE_ORDER)
    hub = plans[2].stage("sft").params
    assert {"hub_folder_hash", "distributed"} <= set(hub["model"]) | set(hub)
    assert "facts_from" in plans[2].stage("compute").params
    assert plans[3].stage("data").params["sources"]
    assert plans[5].stage("simpo").params["pairs"]["source"] == "path"


def test_a_template_file_adds_its_hash_to_the_model_params(plan_of):
    trl = importlib.util.find_spec("trl")  # its shipped templates; trl itself is not imported
    template = Path(trl.origin).parent / "chat_templates" / "qwen2_5.jinja"
    plan = plan_of("cpu", ("model=qwen0.5b", f"model.chat_template={template}"))
    assert "chat_template_hash" in plan.stage("sft").params["model"]
    check_plan(plan)


def test_adapter_folders_compile_to_params_of_their_types(plan_of, tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    plan = plan_of("cpu", ("train=dpo", f"train.dpo.init_adapter={tmp_path}", "merge=linear",
                         f"merge.adapters=[{tmp_path}]"))
    assert plan.stage("merge").params["adapters"] == [{"path": str(tmp_path.resolve())}]
    assert plan.stage("dpo").params["init_adapter"] == str(tmp_path.resolve())
    check_plan(plan)


def test_the_check_refuses_an_extra_key_a_missing_key_and_a_wrong_type(plan_of):
    plan = plan_of("cpu", ())
    sft = plan.stage("sft").params
    check("sft", sft)
    with pytest.raises(ValidationError, match="params.lora_rank"):
        check("sft", {**sft, "lora_rank": 16})
    with pytest.raises(ValidationError, match=r"params.train.lr\n"):
        check("sft", {**sft, "train": {**sft["train"], "lr": 1e-4}})
    with pytest.raises(ValidationError, match=r"params.train.seed\n"):
        check("sft", {**sft, "train": {k: v for k, v in sft["train"].items() if k != "seed"}})
    with pytest.raises(ValidationError, match=r"params.lora.r\n"):
        check("sft", {**sft, "lora": {**sft["lora"], "r": "16"}})
    with pytest.raises(ValidationError, match=r"params.quant.double_quant\n"):
        check("sft", {**sft, "quant": {**sft["quant"], "double_quant": 1}})
    monitor = plan_of("cpu", ("deploy=ollama", "monitor=default")).stage("monitor").params
    check("monitor", monitor)
    with pytest.raises(ValidationError, match=r"params.for.latency\n"):
        check("monitor", {**monitor, "for": {**monitor["for"], "latency": 5}})


@pytest.mark.parametrize("kind", STAGE_ORDER)
def test_each_stage_module_declares_its_params_type(kind):
    module = importlib.import_module(stage_module(kind))
    expected = params_type(kind)
    assert typing.get_type_hints(module.run)["params"] is expected
    if hasattr(module, "train"):  # a training stage's one-rank entry point
        assert typing.get_type_hints(module.train)["params"] is expected
