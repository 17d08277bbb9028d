"""The model's own chat template: the assistant-only loss mask on real templates (Qwen2.5 through
TRL's training variant, Llama 3.1 by rendering), the sft backend training on it, reading tool calls
back in each template's syntax, and model.chat_template checked at compile time."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys

import pytest

from llmops.errors import ConfigError

TOOLS = [{"type": "function", "function": {
    "name": "create_task", "description": "Creates a task.",
    "parameters": {"type": "object", "properties": {"title": {"type": "string"},
                                                    "priority": {"type": "integer"}},
                   "required": ["title"]}}}]
CALL = {"type": "function", "function": {"name": "create_task",
                                         "arguments": {"title": "buy milk", "priority": 2}}}
TOOL_ROW = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "You manage tasks."},
    {"role": "user", "content": "Add a task: buy milk, priority 2"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"id": 3}'},
    {"role": "assistant", "content": "Done: task 3."}]}
MULTI_TURN = {"messages": [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Nothing, thanks."},
    {"role": "assistant", "content": "Bye."}]}

# The assistant turns as each template writes them, up to and including the end-of-turn token.
EXPECTED = {
    "qwen2": {
        "tool": ['<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk", '
                 '"priority": 2}}\n</tool_call><|im_end|>', "Done: task 3.<|im_end|>"],
        "multi": ["Hello! How can I help?<|im_end|>", "Bye.<|im_end|>"],
        "method": "trl_training_template",
    },
    "llama": {
        "tool": ['{"name": "create_task", "parameters": {"title": "buy milk", "priority": 2}}'
                 "<|eot_id|>", "Done: task 3.<|eot_id|>"],
        "multi": ["Hello! How can I help?<|eot_id|>", "Bye.<|eot_id|>"],
        "method": "rendered",
    },
}


def _runs(tok, ids, mask):
    """Decodes each run of consecutive masked-in tokens."""
    pairs = zip(ids, mask, strict=True)
    return [tok.decode([i for i, _ in group])
            for on, group in itertools.groupby(pairs, key=lambda p: bool(p[1])) if on]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_mask_covers_exactly_the_assistant_turns(real_tokenizer, family):

    from llmops.backends.templates import mask_method, rendered_mask, tokenize_chat

    tok = real_tokenizer(family)
    method = mask_method(tok)
    assert method[0] == EXPECTED[family]["method"]
    for row, key in ((TOOL_ROW, "tool"), (MULTI_TURN, "multi")):
        enc = tokenize_chat(tok, row["messages"], row.get("tools"), method)
        own = tok.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=True,
                                      return_dict=True)["input_ids"]
        assert enc["input_ids"] == list(own)  # the tokens the model sees at inference
        assert _runs(tok, enc["input_ids"], enc["assistant_masks"]) == EXPECTED[family][key]
        # TRL's training variant and rendering agree where both apply
        assert rendered_mask(tok, [dict(m) for m in row["messages"]],
                             row.get("tools")) == enc


def test_sft_trains_on_the_rendered_mask(real_model, stage_params, tmp_path):
    """Llama 3.1's template has no generation marks and TRL has no training variant of it: the
    sft backend still trains on the assistant tokens only (tool call and end-of-turn included)."""
    from llmops.backends import hf
    from llmops.core.context import StageContext
    from llmops.files import write_jsonl

    folder = real_model("llama")
    params = stage_params("sft", "model=llama1b", f"model.hub_id={folder}",
                          "model.chat_template=auto", "train.max_steps=2",
                          "train.batch_size=2", "train.max_length=512", "eval=none")
    params["train"].update(save_steps=100, logging_steps=1, grad_accum=1)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [TOOL_ROW, MULTI_TURN])
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("test"))
    model, tok = hf.load_model(params, str(folder), ctx)
    trainer, start, mask = hf.sft_trainer(model, tok, params, data, tmp_path / "out", ctx,
                                          hf.lora_config(params["lora"]))
    assert mask["mask"] == "rendered"
    learned = []
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                               strict=True):
            learned.append(_runs(tok, ids, [label != -100 for label in labels]))
    assert sorted(learned) == sorted([EXPECTED["llama"]["tool"], EXPECTED["llama"]["multi"]])
    report = hf.run_training(trainer, tok, params, tmp_path / "out", ctx, "hf", start)
    assert report["steps"] == 2 and report["final_loss"] > 0


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_calls_parse_back_in_the_templates_syntax(real_tokenizer, family):

    from llmops.backends.generation import render_answer
    from llmops.backends.templates import answer_parser

    tok = real_tokenizer(family)
    parse = answer_parser(tok)
    answer = render_answer(tok, TOOL_ROW["messages"][:3], TOOLS)
    parsed = parse(answer)
    assert parsed.calls == [CALL["function"]] and parsed.text == "" and not parsed.errors
    free = parse("Sure, which title?")
    assert free.calls == [] and free.text == "Sure, which title?"
    if family == "llama":  # the optional python tag, and a cut-off call
        tagged = parse('<|python_tag|>' + answer)
        assert tagged.calls == [CALL["function"]] and tagged.text == ""
        assert parse('{"name": "create_task", "parameters": {"ti').errors
    else:
        two = parse("Adding both.\n" + answer + "\n" + answer)
        assert two.calls == [CALL["function"]] * 2 and two.text == "Adding both."


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_eval_scores_the_models_tool_calls(real_tokenizer, family):
    """eval's scorer reads the reference answers, written in the template's syntax, as the calls
    they are: a model that answers them scores exact match 1."""

    from llmops.backends.generation import render_answer
    from llmops.backends.templates import answer_parser
    from llmops.scoring.split import score_split

    tok = real_tokenizer(family)
    rows = [{"tools": TOOLS, "messages": TOOL_ROW["messages"][:3]}]
    answers = [render_answer(tok, r["messages"], r["tools"]) for r in rows]
    scored = score_split(rows, answers, answer_parser(tok))
    assert scored["per_row"][0]["kind"] == "tool"
    assert scored["metrics"]["exact_match"] == 1.0


def test_chat_template_checked_at_compile_time(compose_plan, tmp_path):
    _, plan = compose_plan(["model=qwen3b", "lora=r16", "hardware=a100_40g", "dry_run=true"])
    assert plan.stage("sft").params["model"]["chat_template"] == "qwen2_5"
    cases = {
        "model.chat_template=qwen25": "'qwen25' is not a known chat template. Did you mean "
                                      "'qwen2_5'?",
        f"model.chat_template={tmp_path}/none.jinja": f"template file '{tmp_path}/none.jinja' "
                                                      "does not exist.",
        "model.chat_template=llama3": "'llama3' cannot render tool calls, but the data has tools "
                                      "(data=task_api). Use a template that does, e.g. "
                                      "model.chat_template=llama3_1",
        "model.chat_template=chatml": "'chatml' is the tiny model's own template.",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            compose_plan(["model=qwen3b", "hardware=a100_40g", "dry_run=true", override])
        problems = [p for p in err.value.problems if p.key == "model.chat_template"]
        assert len(problems) == 1 and message in problems[0].message, problems


def test_tool_data_in_a_file_is_peeked_at_compile_time(compose_plan, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(TOOL_ROW) + "\n" + json.dumps(MULTI_TURN) + "\n")
    with pytest.raises(ConfigError) as err:
        compose_plan(["model=qwen3b", "hardware=a100_40g", "dry_run=true",
                      "model.chat_template=phi3", "data=files", f"data.path={path}"])
    assert f"'phi3' cannot render tool calls, but the data has tools ({path} line 1)" in str(
        err.value)
    path.write_text(json.dumps(MULTI_TURN) + "\n")
    compose_plan(["model=qwen3b", "hardware=a100_40g", "dry_run=true",
                  "model.chat_template=phi3", "data=files", f"data.path={path}"])


def test_wrong_template_exits_2_before_anything_is_written(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmops", "model=qwen3b",
                           "model.chat_template=llama3", f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "model.chat_template: 'llama3' cannot render tool calls" in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_a_template_file_is_part_of_the_fingerprint(tmp_path, compose_plan, real_model):
    """Editing a .jinja template rebuilds what trains and serves with it: its content is hashed."""
    folder = real_model("qwen2")
    template = tmp_path / "chat.jinja"
    template.write_text((folder / "chat_template.jinja").read_text()
                        if (folder / "chat_template.jinja").is_file()
                        else __import__("real_models").trl_template("qwen2_5.jinja"))
    args = ["model=qwen0.5b", f"model.hub_id={folder}", f"model.chat_template={template}",
            "dry_run=true", "hardware=cpu"]
    first = {s.name: s.fingerprint for s in compose_plan(args)[1].stages}
    template.write_text(template.read_text() + "\n")
    second = {s.name: s.fingerprint for s in compose_plan(args)[1].stages}
    assert first["sft"] != second["sft"] and first["data"] != second["data"]
    assert first["decide"] == second["decide"]


def test_a_template_with_generation_marks_is_masked_without_importing_trl(tmp_path):
    """The data stage's preview asks mask_method of the tiny template (it has {% generation %}
    marks), and eval reads the tiny model's answers with answer_parser (a template TRL does not
    ship): neither may import TRL, which loads transformers' model stack and datasets (~3 CPU-s a
    data job, ~1 an eval stage process)."""
    from llmops.backends.tiny import build_tokenizer

    build_tokenizer(["call a tool", "answer"], 300, model_max_length=64).save_pretrained(
        str(tmp_path))
    code = ("import sys; from transformers import PreTrainedTokenizerFast as T; "
            "from llmops.backends.templates import answer_parser, mask_method; "
            f"tok = T.from_pretrained({str(tmp_path)!r}); "
            "print(mask_method(tok), answer_parser(tok)('hi').text, 'trl' in sys.modules, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split("\n")[-2]
    assert out == "('generation_marks', None) hi False False", out


def test_trl_recognises_only_the_templates_it_ships():
    """answer_parser imports TRL only for a template TRL may recognise (trl_may_know): every
    template TRL's add_response_schema accepts is the text of a file it ships; another text
    (edited by one character, or a dict of named templates) is one it refuses."""
    from types import SimpleNamespace

    import trl.chat_template_utils as utils

    from llmops.backends.templates import trl_may_know

    accepted = []
    for name, text in vars(utils).items():
        if not (name.endswith("_chat_template") and isinstance(text, str)):
            continue
        try:
            utils.add_response_schema(SimpleNamespace(chat_template=text))
        except ValueError:
            continue
        accepted.append(name)
        assert trl_may_know(text), name
        with pytest.raises(ValueError):
            utils.add_response_schema(SimpleNamespace(chat_template=text + "\n"))
        assert not trl_may_know(text + "\n") and not trl_may_know({"default": text})
    assert {"qwen2_5_chat_template", "llama3_1_chat_template"} <= set(accepted)
