"""Reasoning through the data stage on Qwen3's real template and vocabulary (issue 22): the report
counts rows with reasoning, their traces and tokens and the traces the template renders;
data.reasoning=drop writes the rows without it; context keeps it in the preview's render, out of
its loss spans; a template that cannot render it stops the stage with exit 2 (the tiny model's)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.errors import ConfigError


def _rows() -> list[dict]:
    """12 rows: 10 single-turn with reasoning (5 as reasoning_content, 5 as a <think> block),
    one two-turn with reasoning on both turns, one without any."""
    rows = []
    for k in range(10):
        trace = f"Add {k} and {k + 1}: that is {2 * k + 1}."
        answer = f"The sum is {2 * k + 1}."
        assistant = ({"role": "assistant", "content": answer, "reasoning_content": trace}
                     if k % 2 else {"role": "assistant", "content": f"<think>\n{trace}\n</think>"
                                                                     f"\n\n{answer}"})
        rows.append({"messages": [{"role": "user", "content": f"What is {k} + {k + 1}?"},
                                  assistant]})
    rows.append({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting: greet."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2.", "reasoning_content": "One and one: two."}]})
    rows.append({"messages": [{"role": "user", "content": "Say hi"},
                              {"role": "assistant", "content": "Hi!"}]})
    return rows


TRACES = [t for r in _rows() for t in (
    [m.get("reasoning_content") or m["content"].split("</think>")[0].removeprefix("<think>\n")
     .rstrip("\n") for m in r["messages"] if m["role"] == "assistant" and (
         m.get("reasoning_content") or "<think>" in m["content"])])]


def _data(tmp_path: Path, stage_params, overrides: tuple, inputs: dict, *more: str
          ) -> tuple[dict, Path]:
    from llmops.stages import data

    path = tmp_path / "reasoning.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), "utf-8")
    p = stage_params("data", *overrides, "data=files", f"data.path={path}",
                     "data.max_length=512", "data.preview=12", "data.val_fraction=0.0",
                     "data.test_fraction=0.1", *more)
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("test"))
    return data.run(p, inputs, out, ctx), out


def _written(out: Path) -> list[dict]:
    return [json.loads(line) for name in ("train", "test")
            for line in (out / f"{name}.jsonl").read_text("utf-8").splitlines()]


@pytest.fixture
def qwen3_overrides(real_model) -> tuple:
    return ("model=hub", "model.chat_template=auto", f"model.hub_id={real_model('qwen3')}")


def test_the_data_report_counts_reasoning_context_keeps_it_out_of_the_loss_and_drop_leaves_it_out(
        tmp_path, stage_params, qwen3_overrides, real_tokenizer, caplog):
    """One data stage per mode (train, context, drop) on the same rows."""
    tok = real_tokenizer("qwen3")
    with caplog.at_level(logging.WARNING):
        train, out = _data(tmp_path, stage_params, qwen3_overrides, {})
    report = train
    assert report["counts"]["rejected"] == 0 and report["counts"]["valid"] == 12
    r = report["reasoning"]
    assert (r["mode"], r["rows"], r["traces"]) == ("train", 11, 12)
    assert r["tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"])
                              for t in TRACES)
    # Qwen3's template leaves out the first turn's reasoning of the two-turn row: counted, said.
    assert r["rendered"] == 11 and "renders 11 of 12 reasoning traces" in r["note"]
    assert any("renders 11 of 12 reasoning traces" in m for m in caplog.messages)
    assert sum(s["traces"] for s in r["by_split"].values()) == 12
    written = _written(out)
    assert sorted(m["reasoning_content"] for row in written for m in row["messages"]
                  if m.get("reasoning_content")) == sorted(TRACES)
    assert not any("<think>" in (m.get("content") or "") for row in written
                   for m in row["messages"])
    # The preview shows the reasoning in the loss (data.reasoning=train).
    shown = report["preview"]["rows"][0]
    learned = "".join(s["text"] for s in shown["segments"] if s["loss"])
    assert learned.startswith("<think>\n") and "</think>\n\nThe sum is" in learned

    # context: the same tokens seen, the reasoning out of the loss spans
    context, _ = _data(tmp_path, stage_params, qwen3_overrides, {}, "data.reasoning=context")
    assert context["reasoning"]["mode"] == "context" and context["reasoning"]["traces"] == 12
    for shown, full in zip(context["preview"]["rows"], train["preview"]["rows"], strict=True):
        text = "".join(s["text"] for s in shown["segments"])
        assert text == "".join(s["text"] for s in full["segments"])  # the same tokens seen
        learned = "".join(s["text"] for s in shown["segments"] if s["loss"])
        assert "<think>" not in learned and "</think>" not in learned
        assert shown["loss_tokens"] < full["loss_tokens"]  # Qwen3's empty block out too
    # drop: the rows are written without it
    drop, out = _data(tmp_path, stage_params, qwen3_overrides, {}, "data.reasoning=drop")
    assert (drop["reasoning"]["mode"], drop["reasoning"]["traces"]) == ("drop", 12)
    assert "note" not in drop["reasoning"]
    written = _written(out)
    assert len(written) == 12 and not any(
        "reasoning_content" in m or "<think>" in (m.get("content") or "")
        for row in written for m in row["messages"])
    assert drop["token_lengths"]["max"] < train["token_lengths"]["max"]


def test_the_tiny_models_template_cannot_render_reasoning_exit_2(tmp_path, stage_params,
                                                                 tiny_base):
    with pytest.raises(ConfigError) as err:
        _data(tmp_path, stage_params, (), {"base": tiny_base})
    assert err.value.exit_code == 2
    (problem,) = err.value.problems
    assert problem.key == "data.reasoning" and problem.message.startswith(
        "the tiny model's template cannot render reasoning, but 11 rows of ")
    report, _ = _data(tmp_path, stage_params, (), {"base": tiny_base}, "data.reasoning=drop")
    assert report["counts"]["valid"] == 12 and report["reasoning"]["mode"] == "drop"
