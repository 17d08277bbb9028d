"""Evaluation that fits what the test split holds: row kinds, free-text metrics, held-out loss,
auto gates with a tolerance by split size, worst examples, and the gates in the plan."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.data.task_api import REFUSAL, SYSTEM_PROMPT, format_call
from llmops.scoring.gates import check_gates, choose_gates
from llmops.scoring.parsers import parse_task_api
from llmops.scoring.split import add_losses, score_split
from llmops.scoring.tolerance import Sample, tolerance

REPO = Path(__file__).resolve().parents[2]
INSTRUCT = REPO / "tests" / "data" / "instruct_100.jsonl"
BOUNDS = {"accuracy": 0.8, "format": 0.9, "safety": 0.8}


def _row(answer: str, user: str = "request", **meta) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}], "meta": meta}


CALL = format_call("create_task", {"title": "buy milk", "priority": "high"})
OPENAI_CALL = {"messages": [
    {"role": "user", "content": "delete task 7"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "delete_task", "arguments": "{\"task_id\": 7}"}}]}],
    "meta": {"kind": "tool_call"}}
ROWS = [_row(CALL), OPENAI_CALL, _row(REFUSAL, refuse=True),
        {**_row("I cannot do that."), "meta": {"kind": "refusal"}},
        _row("The opposite of hot is cold.", "opposite of hot?"),
        _row("A lime is green.", "colour of a lime?"),
        _row("Hello, Ada! Nice to meet you.", "greet Ada")]
ANSWERS = ['{"tool": "create_task", "arguments": {"priority": "high", "title": "buy milk"}}',
           '{"tool": "delete_task", "arguments": {"task_id": 8}}', "Sorry, no.", "Sure!",
           "The opposite of hot is cold.", "A lime is yellow.", "bye"]


# ---- row kinds and metrics by kind ----

def test_rows_are_scored_by_what_they_hold():
    scored = score_split(ROWS, ANSWERS, parse_task_api)
    kinds = [s["kind"] for s in scored["per_row"]]
    assert kinds == ["tool", "tool", "refusal", "refusal", "text", "text", "text"]
    by = scored["by_kind"]
    assert (by["tool"]["count"], by["refusal"]["count"], by["text"]["count"]) == (2, 2, 3)
    assert by["tool"]["exact_match"] == 0.5  # key order free; task 8 is not task 7
    assert by["tool"]["json_valid_rate"] == 1.0
    assert by["refusal"]["refusal_rate"] == 0.5
    assert by["text"]["exact_match"] == pytest.approx(1 / 3)
    assert by["text"]["rouge_l"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert 0 < by["text"]["chrf"] < 1
    m = scored["metrics"]
    assert m["counts"] == {"total": 7, "tool": 2, "refusal": 2, "text": 3}
    assert m["exact_match"] == pytest.approx(3 / 7)
    assert m["rouge_l"] == by["text"]["rouge_l"]
    assert scored["samples"]["tool.exact_match"] == {"value": 0.5, "n": 2, "sd": None,
                                                     "kind": "rate"}


def test_held_out_loss_is_capped_so_a_diverged_model_stays_finite_and_fails():
    scored = score_split(ROWS[4:], ANSWERS[4:], parse_task_api)
    add_losses(scored, [(3.0, 3), (float("nan"), 2), None])
    assert scored["per_row"][0]["loss"] == 1.0 and scored["per_row"][1]["loss"] == 100.0
    assert scored["per_row"][2]["loss"] is None
    assert scored["metrics"]["loss"] == pytest.approx(203 / 5)
    assert math.isfinite(scored["metrics"]["perplexity"])
    assert scored["by_kind"]["tool"]["loss"] is None


def test_worst_examples_list_what_fails_worst_first():
    from llmops.scoring.examples import worst_examples

    scored = score_split(ROWS, ANSWERS, parse_task_api)
    worst = worst_examples(ROWS, ANSWERS, scored["per_row"], k=2)
    assert [e["row"] for e in worst["text.rouge_l"]] == [6, 5]  # 0.0, then 0.75; 1.0 not listed
    assert worst["text.rouge_l"][0] == {"row": 6, "prompt": "greet Ada",
                                        "reference": "Hello, Ada! Nice to meet you.",
                                        "prediction": "bye", "score": 0.0}
    assert [e["row"] for e in worst["tool.exact_match"]] == [1]
    assert worst["tool.exact_match"][0]["reference"] == (
        '[{"name": "delete_task", "arguments": "{\\"task_id\\": 7}"}]')
    assert [e["row"] for e in worst["refusal.refusal_rate"]] == [3]
    assert worst_examples(ROWS, ANSWERS, scored["per_row"], k=0) == {}


# ---- tolerance by split size ----

def _samples(metric: str, base: Sample, tuned: Sample) -> dict:
    return {"base": {metric: base.to_dict()}, "tuned": {metric: tuned.to_dict()}}


@pytest.mark.parametrize(("n", "passed"), [(20, True), (2000, False)])
def test_a_rate_drop_fails_only_when_the_split_is_large_enough_to_show_it(n, passed):
    gates = {"no_regression": {"metric": "tool.exact_match", "tolerance": "auto"}}
    samples = _samples("tool.exact_match", Sample(0.9, n), Sample(0.85, n))
    results, ok = check_gates(gates, {"tool.exact_match": 0.85}, {"tool.exact_match": 0.9},
                              samples, 0.95)
    pooled = 0.875
    expected = 1.6448536 * math.sqrt(pooled * (1 - pooled) * (2 / n))
    gate = results[0]
    assert ok is passed and gate["passed"] is passed
    assert gate["tolerance"] == pytest.approx(expected, rel=1e-6)
    assert gate["threshold"] == pytest.approx(0.9 - expected, rel=1e-6)
    assert gate["rule"].startswith("one-sided two-proportion z-test at 95%")
    assert f"n_base={n}, n_tuned={n}" in gate["rule"]


def test_mean_scores_use_a_standard_error_bound_and_perplexity_compares_in_loss_space():
    base, tuned = Sample(0.30, 10, 0.2, "mean"), Sample(0.25, 10, 0.2, "mean")
    tol, rule = tolerance(base, tuned, 0.95)
    assert tol == pytest.approx(1.6448536 * math.sqrt(0.04 / 10 + 0.04 / 10), rel=1e-6)
    assert "standard-error bound" in rule
    gates = {"text_quality": {"metric": "text.rouge_l", "tolerance": "auto"},
             "perplexity": {"metric": "text.perplexity", "tolerance": "auto"}}
    samples = {"base": {"text.rouge_l": base.to_dict(),
                        "text.loss": Sample(2.0, 10, 0.1, "mean").to_dict()},
               "tuned": {"text.rouge_l": tuned.to_dict(),
                         "text.loss": Sample(2.3, 10, 0.1, "mean").to_dict()}}
    results, ok = check_gates(gates, {"text.rouge_l": 0.25, "text.perplexity": math.exp(2.3)},
                              {"text.rouge_l": 0.30, "text.perplexity": math.exp(2.0)},
                              samples, 0.95)
    by = {g["name"]: g for g in results}
    assert by["text_quality"]["passed"] is True  # a 0.05 drop on 10 rows is noise
    loss_tol = 1.6448536 * math.sqrt(0.01 / 10 + 0.01 / 10)
    assert by["perplexity"]["threshold"] == pytest.approx(math.exp(2.0 + loss_tol), rel=1e-6)
    assert by["perplexity"]["passed"] is False and by["perplexity"]["direction"] == "max"
    assert "tuned loss - base loss" in by["perplexity"]["rule"]
    assert ok is False


# ---- which gates: auto, the use case's target, adjusted, your own ----

def test_auto_gates_that_cannot_apply_are_skipped_with_the_reason():
    _, gates = choose_gates("auto", BOUNDS, None)
    scored = score_split(ROWS[4:], ANSWERS[4:], parse_task_api)  # free text only
    view = dict(scored["metrics"])
    for kind, metrics in scored["by_kind"].items():
        view.update({f"{kind}.{k}": v for k, v in metrics.items()})
    results, ok = check_gates(gates, view, view, {"base": scored["samples"],
                                                  "tuned": scored["samples"]}, 0.95)
    state = {g["name"]: "skipped" if g["skipped"] else g["passed"] for g in results}
    assert state == {"accuracy": "skipped", "format": "skipped", "safety": "skipped",
                     "no_regression": "skipped", "text_quality": True, "perplexity": "skipped"}
    by = {g["name"]: g for g in results}
    assert by["accuracy"]["reason"] == ("the test split holds no tool rows, so tool.exact_match "
                                        "does not apply")
    assert by["safety"]["reason"].startswith("the test split holds no refusal rows")
    assert ok is True


def test_the_use_case_target_sets_the_primary_threshold(compose_plan):
    def accuracy(*overrides):
        gates = compose_plan(list(overrides))[1].stage("eval").params["gates"]
        return gates["accuracy"]["threshold"], gates["accuracy"]["basis"]

    assert accuracy() == (0.9, "1 - usecase.target_error_rate 0.1")  # usecase=task_api
    assert accuracy("usecase=medical_formatting") == (0.99,
                                                      "1 - usecase.target_error_rate 0.01")
    assert accuracy("usecase=none") == (0.8, "eval.auto.accuracy")


def test_adjusting_an_auto_gate_keeps_auto_and_an_own_set_replaces_it(compose_plan):
    params = compose_plan(["eval.gates.accuracy.threshold=0.95"])[1].stage("eval").params
    assert params["gate_mode"] == "auto"
    assert list(params["gates"]) == ["accuracy", "format", "safety", "no_regression",
                                     "text_quality", "perplexity"]
    assert params["gates"]["accuracy"] == {"metric": "tool.exact_match", "direction": "min",
                                           "basis": "eval.gates", "threshold": 0.95}
    params = compose_plan(["eval.gates={mine:{metric:text.rouge_l,threshold:0.3}}"])[1] \
        .stage("eval").params
    assert params["gate_mode"] == "explicit"
    assert params["gates"] == {"mine": {"metric": "text.rouge_l", "threshold": 0.3,
                                        "direction": "min", "basis": "eval.gates"}}


def test_a_gate_without_a_metric_must_be_an_auto_gate(compose_plan):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_plan(["eval.gates.acuracy.threshold=0.9"])
    assert [str(p) for p in err.value.problems] == [
        "eval.gates.acuracy.metric: is required: 'acuracy' is not an auto gate (accuracy, "
        "format, safety, no_regression, text_quality, perplexity), so name its metric, e.g. "
        "eval.gates.acuracy.metric=exact_match."]


# ---- rendering: the run summary and the dry-run plan ----

def _text(renderables) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    for r in renderables:
        console.print(r)
    return console.export_text()


def test_each_gate_state_renders_in_the_summary():
    from llmops.compiler.render import summary_table

    gates = {"accuracy": {"metric": "tool.exact_match", "threshold": 0.9},
             "format": {"metric": "tool.json_valid_rate", "threshold": 0.9},
             "text_quality": {"metric": "text.rouge_l", "tolerance": "auto"}}
    samples = _samples("tool.exact_match", Sample(0.5, 4), Sample(0.95, 4))
    results, ok = check_gates(gates, {"tool.exact_match": 0.95, "tool.json_valid_rate": 0.5},
                              {"tool.exact_match": 0.5}, samples, 0.95)
    report = {"base": {"exact_match": 0.5}, "tuned": {"exact_match": 0.95}, "gates": results,
              "passed": ok}
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in _text(summary_table({"stages": {}}, report)).splitlines()
            if line.startswith("│ ") and line.split("│")[1].strip() in gates}
    assert rows["accuracy"] == ["tool.exact_match", "0.950", "0.900", "yes", ""]
    assert rows["format"] == ["tool.json_valid_rate", "0.500", "0.900", "NO", "short by 0.400"]
    assert rows["text_quality"][:4] == ["text.rouge_l", "n/a", "n/a", "skipped"]
    assert rows["text_quality"][4].startswith("the test split holds no text")


def _dry_run(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "llmops", "dry_run=true",
                        f"hydra.run.dir={tmp_path / 'run'}", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_dry_run_plan_lists_the_gates_auto_chose(tmp_path):
    out = _dry_run(tmp_path)
    assert "eval gates: auto, chosen from the bundled set's tool rows and refusal rows:" in out
    assert ("tool rows -> accuracy: tool.exact_match ≥ 0.900 (1 - usecase.target_error_rate "
            "0.1)") in out
    assert "refusal rows -> safety: refusal.refusal_rate ≥ 0.800 (eval.auto.safety)" in out
    assert "text_quality" not in out  # the bundled set holds no free text
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    eval_params = next(s for s in plan["stages"] if s["kind"] == "eval")["params"]
    assert eval_params["gate_mode"] == "auto" and eval_params["confidence"] == 0.95

    out = _dry_run(tmp_path, "data=jsonl", f"data.path={INSTRUCT}")
    assert ("eval gates: auto, chosen from the test split at eval time (listed in "
            "eval_report.json gate_choice):") in out
    assert ("free-text rows -> text_quality: text.rouge_l no worse than base (tolerance by test "
            "split size)") in out


# ---- held-out loss on a real model ----

def test_held_out_loss_is_the_models_loss_on_the_answer_tokens(tiny_base):
    import torch

    from llmops.backends.generation import load_model
    from llmops.backends.heldout import answer_tokens, row_losses

    model, tok = load_model(tiny_base)
    rows = ROWS[4:] + [_row("Goodbye, Ben. See you soon!", "say goodbye to Ben")]
    losses = row_losses(model, tok, rows, batch_size=8)
    one_by_one = row_losses(model, tok, rows, batch_size=1)
    assert [c for _, c in losses] == [c for _, c in one_by_one]
    assert [x for x, _ in losses] == pytest.approx([x for x, _ in one_by_one], rel=1e-5)
    for row, (nll, count) in zip(rows, losses, strict=True):
        ids, start = answer_tokens(tok, row, 512)
        answer = tok.decode(ids[start:])
        assert answer == row["messages"][-1]["content"] + "<|im_end|>\n"
        labels = torch.tensor([[-100] * start + ids[start:]])
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert count == len(ids) - start
        assert nll / count == pytest.approx(expected, rel=1e-5)


# ---- end to end: free text with auto gates; a destroyed model is caught ----

FREE_TEXT = ("data=jsonl", f"data.path={INSTRUCT}", "data.test_fraction=0.3")


@pytest.mark.slow
def test_free_text_passes_auto_gates_and_a_destroyed_model_is_caught(tmp_path, seed_store,
                                                                    default_run, compose_plan):
    from llmops.errors import GateFailed
    from llmops.runner.run import run_plan

    # The default tiny base (pre-trained as README's run does it) comes from default_run's store.
    seed_store(tmp_path / "store", *FREE_TEXT, source=default_run["store"])
    # The passing run goes through the runner in this process (what it checks is the reports).
    overrides = ["usecase=none", "progress=false", *FREE_TEXT, f"store_dir={tmp_path / 'store'}",
                 "train.max_steps=100"]
    manifest = run_plan(compose_plan(overrides)[1], tmp_path / "good", overrides,
                        stage_process=False)
    assert manifest["status"] == "succeeded", manifest
    report = json.loads((tmp_path / "good" / "eval_report.json").read_text())
    assert report["gate_choice"]["rows"] == {"tool": 0, "refusal": 0, "text": 30}
    assert report["gate_choice"]["applied"] == ["text_quality", "perplexity"]
    assert set(report["gate_choice"]["skipped"]) == {"accuracy", "format", "safety",
                                                     "no_regression"}
    text = report["metrics_by_kind"]["text"]
    assert text["count"] == 30
    assert text["tuned"]["rouge_l"] > text["base"]["rouge_l"]
    assert text["tuned"]["perplexity"] < text["base"]["perplexity"]
    assert report["tuned"]["loss"] == pytest.approx(math.log(report["tuned"]["perplexity"]))
    for gate in report["gates"]:
        assert gate["rule"] and (gate["skipped"] or gate["passed"])
    assert len(report["worst_examples"]["text.rouge_l"]) == 3
    assert {"prompt", "reference", "prediction", "base_prediction"} <= set(
        report["worst_examples"]["text.rouge_l"][0])
    assert (tmp_path / "good" / "export_report.json").is_file()

    # The tiny base was pre-trained on the Task-API calls only: on free text it scores ROUGE-L
    # ~0.01, so no model can be measurably worse there. A destroyed model is caught where the
    # base is good: on the bundled tool calls (base exact match ~0.5), by the no-regression gate.
    # Its base and data are the default run's (seeded); 10 steps at learning rate 0.9 and the
    # first 16 test rows are enough to show it.
    # Through the runner here too: the CLI's exit code 3 and its message on stderr for a failed
    # gate are test_gates' `fail` run's (conftest's gate_runs); the message is the error's.
    seed_store(tmp_path / "store", stages=("base", "data"), source=default_run["store"])
    overrides = ["usecase=none", "progress=false", f"store_dir={tmp_path / 'store'}",
                 "train.max_steps=10", "train.learning_rate=0.9", "eval.limit=16"]
    with pytest.raises(GateFailed) as failed:
        run_plan(compose_plan(overrides)[1], tmp_path / "destroyed", overrides,
                 stage_process=False)
    assert failed.value.exit_code == 3
    assert "no_regression: tool.exact_match" in str(failed.value)
    report = json.loads((tmp_path / "destroyed" / "eval_report.json").read_text())
    gate = next(g for g in report["gates"] if g["name"] == "no_regression")
    assert gate["passed"] is False and gate["value"] < gate["threshold"] < gate["base"]
    assert "two-proportion" in gate["rule"]
    assert not (tmp_path / "destroyed" / "export_report.json").exists()
