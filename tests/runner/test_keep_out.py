"""The stage process keeps out bitsandbytes when no stage of the plan uses it, and wandb, which no
stage uses (llmops.runner.supervise.unused_packages, llmops.runner.child.keep_out): peft imports
bitsandbytes whenever it is installed, ~2 CPU-s of torch.compile and a hub lookup in every job that
trains or evaluates; TRL's trainers import wandb, ~0.4 CPU-s. The ranks of a launched training job
keep out the same (llmops.runner.rank; tests/backends/test_distributed_launch.py checks their
imports), and so does task 0 of a multi-task submitit job, which runs its stages itself (but not
wandb under tracking=wandb: its sink runs there).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmops.runner.rank import unused_in_runner
from llmops.runner.supervise import unused_packages


@pytest.mark.parametrize(("overrides", "kept_out"), [
    ([], ("bitsandbytes", "wandb")),
    (["train=sft_dpo"], ("bitsandbytes", "wandb")),
    (["tracking=wandb"], ("bitsandbytes", "wandb")),  # its sink runs in the runner
    (["quant=nf4"], ("wandb",)),
    (["quant=int8"], ("wandb",)),
    (["train.optimizer=adamw_8bit"], ("wandb",)),
    (["train.optimizer=paged_adamw_8bit"], ("wandb",)),
])
def test_bitsandbytes_is_kept_out_only_of_plans_that_do_not_use_it(compose_plan, overrides,
                                                                   kept_out):
    _, plan = compose_plan(["hardware=cpu", *overrides])
    assert unused_packages(spec.params for spec in plan.stages) == kept_out


def test_merge_of_an_adapter_trained_on_a_quantized_base_keeps_bitsandbytes():
    assert unused_packages([{"quant_trained": "nf4"}]) == ("wandb",)
    assert unused_packages([{"train": {"backend": "unsloth", "optimizer": "adamw_torch"}}]) == (
        "wandb",)
    assert unused_packages([{"quant_trained": "none"}, {"train": {"backend": "hf"}}]) == (
        "bitsandbytes", "wandb")


@pytest.mark.parametrize(("overrides", "kept_out"), [
    ([], ("bitsandbytes", "wandb")),
    (["tracking=wandb"], ("bitsandbytes",)),
    (["quant=nf4", "tracking=wandb"], ()),
])
def test_a_runner_that_runs_its_stages_keeps_out_wandb_only_without_its_sink(compose_plan,
                                                                             overrides, kept_out):
    _, plan = compose_plan(["hardware=cpu", *overrides])
    assert unused_in_runner(plan) == kept_out


_PROBE = r"""
import importlib.util, json, sys
import json as already
from llmops.runner.child import keep_out

keep_out(["bitsandbytes", "json"])
try:
    import bitsandbytes  # noqa: F401
    imported = True
except ModuleNotFoundError:
    imported = False
print(already.dumps({"imported": imported, "spec": importlib.util.find_spec("bitsandbytes"),
                     "json": sys.modules["json"] is already}))
"""


def test_a_kept_out_package_imports_as_if_not_installed_and_an_imported_one_stays():
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "imported": False, "spec": None, "json": True}
