"""The stage process under a runner that outlives it (llmops/runner/supervise.py, child.py,
memory.py): a stage killed by a signal, or out of memory, is recorded with the reason and the fix.

The kill is real (SIGKILL to the real stage process of a real run, found with psutil); the
out-of-memory errors are real exceptions raised inside the real trainer of the real stage process
(tests/fault_child.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest
from test_sweeps import TRAIN_ONLY

from llmops.errors import StageError
from llmops.runner import memory


def _manifest(tmp_path: Path) -> dict:
    runs = sorted((tmp_path / "outputs/runs").glob("*/*/manifest.json"),
                  key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


def _stage_process(runner: int) -> psutil.Process:
    """Returns the runner's stage process (python -m llmops.runner.child)."""
    for child in psutil.Process(runner).children():
        if "llmops.runner.child" in " ".join(child.cmdline()):
            return child
    raise AssertionError(f"runner {runner} has no stage process")


# A stage process killed by SIGKILL (what the OOM killer sends) is recorded with the signal, the
# peak and the plan's fix, and the rerun resumes: tests/config/test_hardening_validate.py's
# stop chain kills its third job's stage process and checks it (one rerun for every stop). Its
# first job takes a terminal's Ctrl-C (SIGINT to the process group: the runner and the stage
# process) and checks that it stops both, the stage once: exit 130, the message, the stage process
# gone, the manifest interrupted with KeyboardInterrupt, no .tmp left, the checkpoint kept.


# The other kinds of out of memory (the unit below tells them apart), each raised from the trainer
# of the real sft stage.
OOM_KINDS = [
    ("cuda_oom", "out of GPU (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ("memory", "out of memory (MemoryError: no detail)"),
]


@pytest.mark.slow
def test_out_of_memory_in_training_stops_the_stage_with_peak_plan_and_fix(
        compose_plan, tmp_path, monkeypatch, capfd):
    """A real allocation failure (torch asks the CPU allocator for 4 EiB) in the trainer of the
    real stage process of a real run: the runner's error and manifest say it, with the peak,
    the compute plan's figure and the fix; nothing is half-written or published. Also: the stage
    process loaded the model and built the trainer without importing what its plan keeps out
    (llmops.runner.supervise.unused_packages; its imports, profiled, reach this process's
    stderr)."""
    from llmops.runner import supervise
    from llmops.runner.run import run_plan

    store = tmp_path / "store"
    monkeypatch.setattr(supervise, "CHILD_MODULE", "fault_child")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    monkeypatch.setenv("LLMOPS_TEST_FAULT", "alloc")
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the stage process's imports
    _, plan = compose_plan([*TRAIN_ONLY, "train.max_steps=3", f"store_dir={store}",
                            "hardware=cpu"])
    kept_out = supervise.unused_packages(spec.params for spec in plan.stages)
    assert {"bitsandbytes", "scipy", "trio", "wandb"} <= set(kept_out)
    capfd.readouterr()
    t0 = time.perf_counter()
    with pytest.raises(StageError) as failed:
        run_plan(plan, tmp_path / "run")
    assert time.perf_counter() - t0 < 300
    # What imports each kept-out package when it is installed ran (transformers' object-detection
    # losses: scipy; the hub's HTTP client: trio; peft: bitsandbytes; TRL's trainers: wandb), but
    # none of them loaded (a loaded package imports its submodules). A module imported through
    # importlib.import_module (transformers' and TRL's lazy modules) has no line of its own.
    imported = set(re.findall(r"^import time:.*\|\s*([\w.]+)\s*$", capfd.readouterr().err,
                              re.M))
    assert {"transformers.loss.loss_for_object_detection", "httpcore2", "peft",
            "trl.trainer.base_trainer"} <= imported
    assert not {m for m in imported if "." in m and m.split(".")[0] in kept_out}
    text = str(failed.value)
    assert text.startswith("sft: out of memory (RuntimeError: [enforce fail at alloc_cpu.cpp"), \
        text
    assert "peak RSS " in text and " GB for this stage; fix: train.batch_size=8" in text, text
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "sft"
    assert manifest["stages"]["sft"] == {**manifest["stages"]["sft"], "status": "failed",
                                         "error": text}
    assert list((store / ".tmp").glob("*")) == []
    assert not (store / "sft").exists()


@pytest.mark.parametrize("fault, error", OOM_KINDS)
def test_each_kind_of_out_of_memory_in_training_is_named_with_peak_plan_and_fix(
        tiny_base, sft_data, stage_params, tmp_path, monkeypatch, fault, error):
    """What the stage process does with the error (llmops.runner.child.run_stage), run here: the
    stage process, the runner and the manifest treat every kind alike (the test above)."""
    import transformers
    from fault_child import raising_step

    from llmops.runner.child import run_stage
    from llmops.runner.memory import fix_for

    monkeypatch.setattr(transformers.Trainer, "training_step", raising_step(fault))
    params = stage_params("sft", "train.max_steps=3")
    (tmp_path / "sft").mkdir()
    request = {"name": "sft", "kind": "sft", "params": params,
               "inputs": {"base": str(tiny_base), "data": str(sft_data)},
               "out_dir": str(tmp_path / "sft"),
               "ctx": {"run_dir": str(tmp_path), "device": "cpu", "seed": 0,
                       "show_progress": False, "threads": 1},
               "plan": {"host_gb": 1.5, "device_gb": None, "what": "for this stage"},
               "fix": fix_for("sft", params, "cpu")}
    with pytest.raises(StageError) as failed:
        run_stage(request)
    text = str(failed.value)
    assert text.startswith(f"sft: {error}"), text
    assert "peak RSS " in text, text
    assert "planned 1.5 GB for this stage; fix: train.batch_size=8" in text, text


def test_out_of_memory_is_recognised_by_kind_not_by_import():
    import torch

    assert memory.is_out_of_memory(MemoryError())
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        assert memory.is_out_of_memory(exc)
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not memory.is_out_of_memory(ValueError("can't allocate memory"))


def test_planned_reads_the_stage_estimate_else_the_training_total(tmp_path):
    report = tmp_path / "compute_plan.json"
    report.write_text(json.dumps({"total_gb": 2.5, "host_gb": 1.2,
                                  "stages": {"eval": {"host_gb": 3.1, "device_gb": None}}}))
    assert memory.planned(report, "eval", "cpu") == {"host_gb": 3.1, "device_gb": None,
                                                     "what": "for this stage"}
    assert memory.planned(report, "sft", "cpu") == {"host_gb": 2.5, "device_gb": None,
                                                    "what": "for training"}
    assert memory.planned(report, "sft", "cuda") == {"host_gb": 1.2, "device_gb": 2.5,
                                                     "what": "for training"}
    assert memory.plan_text(memory.planned(report, "merge", "cpu"), "cpu") == \
        "planned nothing for this stage (the plan covers training: 2.5 GB)"
    assert memory.planned(tmp_path / "missing.json", "sft", "cpu") == {}
    assert memory.plan_text({}, "cpu") == "no memory plan (the plan has no compute stage)"


def test_the_fix_names_the_knob_of_the_stage_with_a_value():
    train = {"train": {"batch_size": 16, "max_length": 1024}, "quant": {"type": "none"}}
    assert memory.fix_for("sft", train, "cpu") == (
        "train.batch_size=8 (train.effective_batch stays, through gradient accumulation) or "
        "train.max_length=512")
    assert memory.fix_for("dpo", train, "cuda").endswith(" or quant=nf4")
    assert memory.fix_for("eval_base", {"batch_size": 32}, "cpu") == \
        "eval.batch_size=16 or a smaller eval.max_new_tokens"
    assert memory.fix_for("eval", {"batch_size": 1}, "cpu").startswith("eval.limit=N")


@pytest.mark.parametrize("code, start", [
    (-9, "eval: the stage's process was killed by SIGKILL — most likely the kernel's "
         "out-of-memory killer: peak RSS 23.9 GB, planned 2.5 GB for this stage; fix: "
         "eval.batch_size=16 or a smaller eval.max_new_tokens."),
    (-11, "eval: the stage's process died of SIGSEGV (a crash in native code (torch, a "
          "tokenizer, llama.cpp)): peak RSS 23.9 GB, planned 2.5 GB for this stage."),
    (3, "eval: the stage's process exited with code 3 without reporting an error"),
])
def test_death_message_says_the_signal_peak_plan_and_fix(code, start):
    plan = {"host_gb": 2.5, "device_gb": None, "what": "for this stage"}
    text = memory.death_message("eval", "eval", code, 23.9e9, plan,
                                memory.fix_for("eval", {"batch_size": 32}, "cpu"), "cpu")
    assert text.startswith(start), text
    assert text.endswith("a rerun starts from this stage.")
