"""Reasoning through the model's own template (issue 22): the loss mask follows data.reasoning
token by token on Qwen3's real template and vocabulary (``<think>``/``</think>`` single tokens),
Qwen3's dropping of earlier turns' reasoning, and templates that cannot render reasoning refused
at compile time and before training (exit 2, naming templates that can)."""

from __future__ import annotations

import json

import pytest

from llmops.errors import ConfigError

ROW = {"messages": [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "It is 5.",
     "reasoning_content": "Two plus three: count 3, 4, 5. So five."}]}
MULTI = {"messages": [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting: greet back."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "It is 5.", "reasoning_content": "Count on: five."}]}


@pytest.fixture
def qwen3(real_tokenizer):
    """Qwen3's real tokenizer (conftest's real_tokenizer: loaded once per worker; read only)."""
    return real_tokenizer("qwen3")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _masked(enc) -> list[list[int]]:
    """The ids of each run of masked-in tokens."""
    runs, cur = [], []
    for i, on in zip(enc["input_ids"], enc["assistant_masks"], strict=True):
        if on:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_the_loss_mask_follows_data_reasoning_token_by_token(qwen3):
    from llmops.backends.templates import mask_method, training_tokens

    tok = qwen3
    think, end_think = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert think != tok.unk_token_id and _ids(tok, "<think></think>") == [think, end_think]
    method = mask_method(tok)
    assert method[0] == "trl_training_template"
    reasoning, answer = ROW["messages"][1]["reasoning_content"], ROW["messages"][1]["content"]
    block = _ids(tok, f"<think>\n{reasoning}\n</think>\n\n")
    tail = _ids(tok, f"{answer}<|im_end|>")

    trained = training_tokens(tok, ROW, method, True, "train")
    own = tok.apply_chat_template(ROW["messages"], tokenize=True, return_dict=True)["input_ids"]
    assert trained["input_ids"] == list(own)  # the template's own render, reasoning in it
    assert _masked(trained) == [block + tail]  # reasoning and answer in the loss, token by token

    context = training_tokens(tok, ROW, method, True, "context")
    assert context["input_ids"] == trained["input_ids"]  # the model still sees the reasoning
    assert _masked(context) == [tail]  # only the answer carries loss
    start = context["input_ids"].index(think)
    assert context["input_ids"][start:start + len(block)] == block
    assert not any(context["assistant_masks"][start:start + len(block)])

    dropped = {"messages": [ROW["messages"][0], {"role": "assistant", "content": answer}]}
    gone = training_tokens(tok, dropped, method, True, "train")  # data.reasoning=drop's rows
    assert _masked(gone) == [_ids(tok, "<think>\n\n</think>\n\n") + tail]
    assert len(gone["input_ids"]) < len(trained["input_ids"])
    # context: Qwen3's empty block (a row without reasoning) is out of the loss as well
    assert _masked(training_tokens(tok, dropped, method, True, "context")) == [tail]


def test_the_held_out_loss_leaves_reasoning_out_with_context_token_by_token(qwen3, real_model):
    """eval's held-out loss (heldout.row_losses) scores what sft trains on: with
    data.reasoning=context the answer's reasoning block is seen, not scored."""
    import torch

    from llmops.backends.generation import load_model
    from llmops.backends.heldout import loss_tokens, row_losses

    tok = qwen3
    reasoning = ROW["messages"][1]["reasoning_content"]
    block = _ids(tok, f"<think>\n{reasoning}\n</think>\n\n")
    ids, train = loss_tokens(tok, ROW, 4096, "train")
    same, context = loss_tokens(tok, ROW, 4096, "context")
    assert same == ids  # the model sees the reasoning either way
    scored = [i for i, m in zip(ids, train, strict=True) if m]
    kept = [i for i, m in zip(ids, context, strict=True) if m]
    assert scored[:len(block)] == block and scored[len(block):] == kept  # only the block left out
    assert kept[:len(_ids(tok, "It is 5.<|im_end|>"))] == _ids(tok, "It is 5.<|im_end|>")

    model, _ = load_model(str(real_model("qwen3")))
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    want = {mode: (float(sum(nll[i - 1] for i, m in enumerate(mask) if m)), sum(mask))
            for mode, mask in (("train", train), ("context", context))}
    for mode in ("train", "context"):
        (got_nll, got_n), = row_losses(model, tok, [ROW], reasoning=mode)
        assert got_n == want[mode][1] and got_nll == pytest.approx(want[mode][0], rel=1e-4)
    assert want["context"][1] == want["train"][1] - len(block)


def test_qwen3_renders_only_the_last_turns_reasoning_and_masks_each_turn(qwen3):
    """Qwen3's template drops the reasoning of turns before the last user message (as the model
    sees a conversation when it answers): those traces are neither seen nor trained on, and
    every assistant turn is still masked in (found after the assistant header)."""
    from llmops.backends.templates import mask_method, training_tokens
    from llmops.data.reasoning import rendered, traces

    tok = qwen3
    enc = training_tokens(tok, MULTI, mask_method(tok), True, "train")
    text = tok.decode(enc["input_ids"], skip_special_tokens=False)
    assert "A greeting" not in text and "Count on: five." in text
    assert rendered(text, traces(MULTI)) == 1
    assert _masked(enc) == [_ids(tok, "Hello!<|im_end|>"),
                            _ids(tok, "<think>\nCount on: five.\n</think>\n\nIt is 5.<|im_end|>")]
    context = training_tokens(tok, MULTI, mask_method(tok), True, "context")
    assert _masked(context) == [_ids(tok, "Hello!<|im_end|>"), _ids(tok, "It is 5.<|im_end|>")]


def test_a_template_that_cannot_render_reasoning_is_refused_before_training(qwen3,
                                                                             real_tokenizer):
    from llmops.backends.templates import check_reasoning

    check_reasoning(qwen3, [ROW], "auto", "sft")  # Qwen3's renders it
    qwen25 = real_tokenizer("qwen2")
    check_reasoning(qwen25, [{"messages": ROW["messages"][:1]}], "auto", "sft")  # no reasoning
    with pytest.raises(ConfigError) as err:
        check_reasoning(qwen25, [{"messages": ROW["messages"][:1]}, ROW], "auto", "sft")
    assert err.value.exit_code == 2
    (problem,) = err.value.problems
    assert problem.key == "model.chat_template"
    assert problem.message.startswith(
        "'auto' cannot render reasoning (an assistant message's reasoning_content), but the "
        "data has reasoning (sft train row 2). Use a template that does, e.g. "
        "model.chat_template=qwen3")
    assert "data.reasoning=drop" in problem.message


def test_reasoning_data_with_a_template_that_drops_it_fails_the_config(compose_plan, tmp_path):
    from llmops.config.templates import reasoning_families

    can = reasoning_families()
    assert "qwen3" in can and "qwen2_5" not in can and "deepseek_r1_distill" not in can
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"messages": [ROW["messages"][0], {
        "role": "assistant", "content": "<think>count</think>It is 5."}]}) + "\n")
    base = ["model=qwen3b", "hardware=a100_40g", "dry_run=true", "data=files",
            f"data.path={path}"]
    with pytest.raises(ConfigError) as err:
        compose_plan(base)  # qwen3b's preset template is qwen2_5
    problems = [p for p in err.value.problems if p.key == "model.chat_template"]
    assert len(problems) == 1 and problems[0].message.startswith(
        f"'qwen2_5' cannot render reasoning (an assistant message's reasoning_content), but the "
        f"data has reasoning ({path} line 1). Use a template that does, e.g. "
        "model.chat_template=qwen3"), problems
    _, plan = compose_plan([*base, "model.chat_template=qwen3"])
    assert "reasoning" not in plan.stage("sft").params  # the default (train) compiles as before
    _, plan = compose_plan([*base, "data.reasoning=drop"])
    assert plan.stage("data").params["reasoning"] == "drop"
    _, plan = compose_plan([*base, "model.chat_template=qwen3", "data.reasoning=context"])
    assert plan.stage("sft").params["reasoning"] == "context"
    assert plan.stage("data").params["preview"]["reasoning"] == "context"
    for stage in ("eval_base", "eval"):  # the held-out loss leaves it out as sft does
        assert plan.stage(stage).params["reasoning"] == "context"
    _, plan = compose_plan([*base, "model.chat_template=qwen3"])
    assert "reasoning" not in plan.stage("eval_base").params  # train: as before


def test_the_ollama_template_renders_qwen3s_reasoning_as_the_training_template(qwen3):
    from llmops.serving.modelfile import (
        REASONING_CONVERSATIONS,
        SAMPLE_TOOLS,
        checked_modelfile,
        go_template,
        render_go,
    )

    made = checked_modelfile(qwen3, "auto", "/m.gguf", 4096, "deploy")
    check = made["check"]
    assert made["family"] == "qwen3" and check["equivalent"], check["mismatches"]
    assert check["reasoning_conversations"] == len(REASONING_CONVERSATIONS) == 2
    assert made["stop"] == ["<|im_end|>", "<|im_start|>"]
    earlier, call = (render_go(go_template("qwen3"), c, tools=SAMPLE_TOOLS)
                     for c in REASONING_CONVERSATIONS)
    assert "<think>" not in earlier  # an answered turn before the last question: dropped
    assert "<|im_start|>assistant\n<think>\nThe user wants a task: milk.\n</think>\n\n" \
           "<tool_call>" in call
