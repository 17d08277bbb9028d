"""lm-evaluation-harness backend: local tasks over the test split, base vs tuned, offline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.data import task_api
from llmops.files import write_jsonl

pytest.importorskip("lm_eval")


def test_lm_eval_plan_and_rules(compose_plan):
    _, plan = compose_plan(["usecase=none", "eval=lm_eval", "eval.lm_eval.limit=10"])
    stage = plan.stage("lm_eval")
    assert stage.needs == ("data", "sft", "base") and stage.params["limit"] == 10
    assert stage.params["tasks"] == ["llmops_task_api_choice", "llmops_task_api_call"]
    from llmops.cli import check
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        check(["usecase=none", "eval.lm_eval.tasks=[llmops_nope]"])
    assert [p.key for p in e.value.problems] == ["eval.lm_eval.tasks"]


@pytest.mark.slow
def test_local_tasks_run_offline_and_tuned_differs_from_base(tiny_base, sft_data, tmp_path,
                                                             stage_params):
    from llmops.stages import lm_eval, sft

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "val"):
        (data / f"{name}.jsonl").write_text((sft_data / f"{name}.jsonl").read_text())
    write_jsonl(data / "test.jsonl", task_api.generate(24, seed=11))
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t.lm"))
    params = stage_params("sft", "lora=r8", "lora.dropout=0.0", "train.backend=hf",
                          "train.learning_rate=3e-3", "train.max_steps=20", "train.batch_size=8",
                          "train.grad_accum=1", "train.max_length=256", "train.save_steps=100",
                          "train.save_total_limit=1")
    sft.run(params, {"data": data, "base": tiny_base}, tmp_path / "sft", ctx)
    out = tmp_path / "lm"
    out.mkdir()
    # 0.5 MiB of fp32 logits over the tiny 512-token vocabulary: 256 positions, under 8 requests.
    params = {**stage_params("lm_eval", "eval=lm_eval"), "batch_size": 8, "max_gen_toks": 48,
              "tasks": ["llmops_task_api_choice", "llmops_task_api_call"], "limit": 12,
              "num_fewshot": None, "logits_mb": 0.5}
    report = lm_eval.run(params, {"data": data, "sft": tmp_path / "sft", "base": tiny_base},
                         out, ctx)
    saved = json.loads((out / "lm_eval_report.json").read_text())  # numpy floats made plain
    assert saved["base"] == report["base"] and saved["tuned"] == report["tuned"]
    assert report["model_args"]["tuned"]["peft"] == str(tmp_path / "sft" / "adapter")
    assert set(report["base"]) == {"llmops_task_api_choice", "llmops_task_api_call"}
    assert "acc" in report["base"]["llmops_task_api_choice"]
    assert "exact_match" in report["tuned"]["llmops_task_api_call"]
    assert report["base"] != report["tuned"]
    assert report["longest_request"] > 48  # a prompt + max_gen_toks
    assert report["harness_batch_size"] == max(1, 256 // report["longest_request"]) < 8
    task_yaml = (out / "tasks" / "llmops_task_api_choice.yaml").read_text()
    assert str(out / "tasks") in task_yaml and "__DATA__" not in task_yaml
    assert Path(out / "tasks" / "task_api_choice.jsonl").is_file()
