"""The stage process keeps out what no stage of its plan uses (llmops.runner.supervise.
unused_packages, llmops.runner.child.keep_out): bitsandbytes (peft imports it whenever it is
installed, ~2 CPU-s of torch.compile and a hub lookup in every job that trains or evaluates) unless
a stage quantizes; scipy (transformers' model loading imports scipy.optimize for its
object-detection losses, ~0.4 CPU-s) unless an lm-evaluation-harness stage may score with
scikit-learn; trio (the hub's HTTP client imports it, ~0.1 CPU-s) and wandb (TRL's trainers,
~0.4 CPU-s) always. tests/runner/test_supervise.py checks the imports of a real stage process.
The ranks of a launched training job keep out the same (llmops.runner.rank;
tests/backends/test_distributed_launch.py checks their imports), and so does task 0 of a
multi-task submitit job, which runs its stages itself (but not wandb under tracking=wandb: its
sink runs there).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmops.runner.rank import unused_in_runner
from llmops.runner.supervise import unused_packages

ALL = ("bitsandbytes", "scipy", "trio", "wandb")
HARNESS = "eval=lm_eval"


@pytest.mark.parametrize(("overrides", "kept_out"), [
    ([], ALL),
    (["train=sft_dpo"], ALL),
    (["tracking=wandb"], ALL),  # its sink runs in the runner
    (["quant=nf4"], ("scipy", "trio", "wandb")),
    (["quant=int8"], ("scipy", "trio", "wandb")),
    (["train.optimizer=adamw_8bit"], ("scipy", "trio", "wandb")),
    (["train.optimizer=paged_adamw_8bit"], ("scipy", "trio", "wandb")),
    ([HARNESS], ("bitsandbytes", "trio", "wandb")),
    ([HARNESS, "quant=nf4"], ("trio", "wandb")),
])
def test_a_package_is_kept_out_only_of_plans_that_do_not_use_it(compose_plan, overrides,
                                                                kept_out):
    _, plan = compose_plan(["hardware=cpu", *overrides])
    assert unused_packages(spec.params for spec in plan.stages) == kept_out
    harness = [spec.kind for spec in plan.stages if "tasks" in spec.params]
    assert harness == (["lm_eval"] if HARNESS in overrides else [])


def test_merge_of_an_adapter_trained_on_a_quantized_base_keeps_bitsandbytes():
    assert unused_packages([{"quant_trained": "nf4"}]) == ("scipy", "trio", "wandb")
    assert unused_packages([{"train": {"backend": "unsloth", "optimizer": "adamw_torch"}}]) == (
        "scipy", "trio", "wandb")
    assert unused_packages([{"quant_trained": "none"}, {"train": {"backend": "hf"}}]) == ALL


# What a harness stage's metrics call (lm_eval.api.metrics: f1 and mcc through scikit-learn, on
# scipy), in a process that keeps out what a plan with an lm_eval stage keeps out.
_HARNESS_PROBE = r"""
import importlib.util, json, sys
from llmops.runner.child import keep_out

keep_out(sys.argv[1:])
from sklearn.metrics import f1_score, matthews_corrcoef

print(json.dumps({"f1": f1_score([1, 0, 1], [1, 1, 1]),
                  "mcc": matthews_corrcoef([1, 0, 1], [1, 0, 0]),
                  "trio": importlib.util.find_spec("trio")}))
"""


def test_a_plan_with_a_harness_stage_keeps_scipy_for_its_metrics(compose_plan):
    _, plan = compose_plan(["hardware=cpu", HARNESS])
    kept_out = unused_packages(spec.params for spec in plan.stages)
    r = subprocess.run([sys.executable, "-c", _HARNESS_PROBE, *kept_out], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "f1": pytest.approx(0.8), "mcc": pytest.approx(0.5), "trio": None}


@pytest.mark.parametrize(("overrides", "kept_out"), [
    ([], ALL),
    (["tracking=wandb"], ("bitsandbytes", "scipy", "trio")),
    (["quant=nf4", "tracking=wandb"], ("scipy", "trio")),
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
