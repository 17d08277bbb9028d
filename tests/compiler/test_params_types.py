"""Every stage's compiled params match its declared type exactly (llmops.compiler.builders).

Each stage kind's builder module holds its params type (`<Kind>Params`, a TypedDict) and its
stage module's `run` declares it. Here pydantic checks the params of every stage of every plan
against that type, strictly and with extra keys forbidden: no key missing, no key extra, every
value of its type. The plans: every option file of every group (one override on the default, on a
CPU and on a faked H100, as tests/config/test_resolve.py fakes it), the combos that add the stages
and keys one override cannot (sft_dpo, ddp, lm_eval, ollama/openai with monitor and release, nf4
on a GPU, a local hub model folder, a data file, a template file, train.backend=openai).
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
from llmops.env import Environment, Gpu
from llmops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
HUB_DIR = REPO / "tests" / "data" / "Qwen2.5-0.5B-Instruct"
DATA_FILE = REPO / "tests" / "data" / "openai_tools.jsonl"

PKGS = frozenset({"bitsandbytes", "wandb", "lm_eval", "llama_cpp"})
ENVS = {
    "cpu": Environment(cpu_count=2, memory_gb=15.6, installed=PKGS),
    # deepspeed too, so distributed=deepspeed_zero2/3 compile here
    "h100": Environment(gpus=(Gpu("NVIDIA H100 80GB HBM3", 79.6),), cpu_count=16,
                        memory_gb=128.0, installed=PKGS | {"deepspeed"}),
}
# Groups whose options are not plan options (Hydra's own, the sweeps).
NOT_OPTIONS = {"hydra", "sweeps"}
OPTIONS = [f"{group.name}={option.stem}"
           for group in sorted(p for p in CONF.iterdir() if p.is_dir())
           if group.name not in NOT_OPTIONS
           for option in sorted(group.glob("*.yaml")) if not option.name.startswith("_")]
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
CASES = [(env, (option,)) for env in ENVS for option in OPTIONS] + \
        [(env, combo) for env in ENVS for combo in COMBOS]
# One override on the default may be a config error (model=hub needs hub_id, data=files a path, a
# GPU profile on a CPU, a model too large for it): such a case has no plan to check, and a combo
# or the other machine covers it. A combo must compile.
CAN_FAIL = {(env, (option,)) for env in ENVS for option in OPTIONS}


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


def _plan(env: str, overrides: tuple[str, ...]):
    return compile_plan(*validate_and_resolve(to_plain(compose(list(overrides))), ENVS[env]))


@pytest.mark.parametrize(("env", "overrides"), CASES,
                         ids=[f"{env}-{'+'.join(o)}" for env, o in CASES])
def test_every_stage_params_are_exactly_of_the_declared_type(env, overrides):
    try:
        plan = _plan(env, overrides)
    except ConfigError:
        if (env, overrides) in CAN_FAIL:
            pytest.skip("a config error: no plan to check")
        raise
    for stage in plan.stages:
        check(stage.kind, stage.params)


def test_the_cases_reach_every_stage_kind_and_key():
    plans = [_plan(env, combo) for env, combo in
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


def test_a_template_file_adds_its_hash_to_the_model_params():
    trl = importlib.util.find_spec("trl")  # its shipped templates; trl itself is not imported
    template = Path(trl.origin).parent / "chat_templates" / "qwen2_5.jinja"
    plan = _plan("cpu", ("model=qwen0.5b", f"model.chat_template={template}"))
    assert "chat_template_hash" in plan.stage("sft").params["model"]
    for stage in plan.stages:
        check(stage.kind, stage.params)


def test_adapter_folders_compile_to_params_of_their_types(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    plan = _plan("cpu", ("train=dpo", f"train.dpo.init_adapter={tmp_path}", "merge=linear",
                         f"merge.adapters=[{tmp_path}]"))
    assert plan.stage("merge").params["adapters"] == [{"path": str(tmp_path.resolve())}]
    assert plan.stage("dpo").params["init_adapter"] == str(tmp_path.resolve())
    for stage in plan.stages:
        check(stage.kind, stage.params)


def test_the_check_refuses_an_extra_key_a_missing_key_and_a_wrong_type():
    plan = _plan("cpu", ())
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
    monitor = _plan("cpu", ("deploy=ollama", "monitor=default")).stage("monitor").params
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
