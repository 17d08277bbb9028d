"""One message form for every template (issue 19): rows stored with JSON-text call arguments
reach each chat template with objects, through one render (llmops.data.chat), so

- what sft trains on is, token for token, the template's own render with object arguments (the
  family's native call format, never a double-encoded one);
- a row the data stage keeps at data.max_length is accepted by sft at the same limit, with the
  same tokens, and one token over is refused by both;
- no stage hands a template a string argument;
- the calls a model is trained to write parse with its family's own parser, and a double-encoded
  call does not.

Families: the tiny model (its ChatML template), Qwen2.5 (qwen2_5.jinja on the real Qwen2
vocabulary), Qwen3 (qwen3.jinja) and Llama 3.1 (llama3_1.jinja on the real Llama 3 vocabulary).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import tempfile
from pathlib import Path

import pytest

from llmops.core.context import StageContext

TOOLS = [
    {"type": "function", "function": {
        "name": "create_task", "description": "Adds a task.",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"},
                                                        "priority": {"type": "integer"}},
                       "required": ["title"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "list_tasks", "description": "Lists tasks.",
        "parameters": {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["open", "done"]}},
            "additionalProperties": False}}},
]
TITLES = ["buy milk", "call mom", "pay rent", "water plants", "book dentist", "fix bike",
          "send invoice", "clean desk", "renew passport", "read the quarterly report twice"]


def _row(k: int, title: str) -> dict:
    """A stored (train.jsonl) tool row: the call's arguments are JSON text, as OpenAI's form."""
    args = {"title": title, "priority": k % 3 + 1}
    return {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You manage tasks."},
        {"role": "user", "content": f"Add a task: {title}, priority {k % 3 + 1}"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{k}", "type": "function",
            "function": {"name": "create_task", "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps({"id": k})},
        {"role": "assistant", "content": f"Done: task {k} is {title}."}]}


ROWS = [_row(k, t) for k, t in enumerate(TITLES)]


def _objects(row: dict) -> dict:
    """The same row written by hand as transformers' templates expect it (object arguments)."""
    row = copy.deepcopy(row)
    for m in row["messages"]:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return row


#: family -> (overrides for a stage's params, the model's call as its template writes it for
#: ROWS[0], the parser syntax the model's answers are read with).
FAMILIES = {
    "tiny": ((), '{"tool":"create_task","arguments":{"title":"buy milk","priority":1}}',
             "task_api"),
    "qwen2": (("model=qwen0.5b", "model.chat_template=auto"),
              '<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk", '
              '"priority": 1}}\n</tool_call>', "hermes"),
    "qwen3": (("model=hub", "model.chat_template=auto"),
              '<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk", '
              '"priority": 1}}\n</tool_call>', "hermes"),
    "llama": (("model=llama1b", "model.chat_template=auto"),
              '{"name": "create_task", "parameters": {"title": "buy milk", "priority": 1}}',
              "llama3_json"),
}
DOUBLE = re.compile(r'"(arguments|parameters)": ?"\{')


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_base, real_model) -> dict:
    """Returns {name, folder, overrides, inputs (the data stage's), tokenizer} for a family, once
    per module (a real vocabulary's tokenizer costs ~1.5 CPU-s to load; a test that patches it
    undoes that at its end)."""
    from llmops.backends.generation import load_tokenizer

    name = request.param
    overrides, call, syntax = FAMILIES[name]
    if name == "tiny":
        folder, inputs = tiny_base, {"base": tiny_base}
    else:
        folder, inputs = real_model(name), {}
        overrides = (*overrides, f"model.hub_id={folder}")
    tok = load_tokenizer(folder)
    tok.padding_side = "right"
    # Qwen3's template drops the empty <think> block of earlier assistant turns, so a row with
    # two assistant turns has no prefix-consistent render: its turns are found after the
    # assistant header (templates.header_spans).
    row = ROWS[0]
    return {"name": name, "folder": folder, "overrides": overrides, "inputs": inputs,
            "tokenizer": tok, "call": call, "syntax": syntax, "row": row}


def _runs(tok, ids, mask) -> list[str]:
    return [tok.decode([i for i, _ in group], skip_special_tokens=False)
            for on, group in itertools.groupby(zip(ids, mask, strict=True),
                                               key=lambda p: bool(p[1])) if on]


def test_sft_trains_on_the_templates_own_render_with_object_arguments(family):
    from llmops.backends.templates import mask_method, training_tokens

    tok, row = family["tokenizer"], family["row"]
    got = training_tokens(tok, row, mask_method(tok), True)
    mine = _objects(row)
    own = tok.apply_chat_template(mine["messages"], tools=mine["tools"], tokenize=True,
                                  return_dict=True)["input_ids"]
    assert got["input_ids"] == list(own)  # token for token
    text = tok.decode(got["input_ids"], skip_special_tokens=False)
    assert family["call"] in text and not DOUBLE.search(text)
    # The loss is on the call in the family's own format (and on the answer after the tool).
    runs = _runs(tok, got["input_ids"], got["assistant_masks"])
    assert len(runs) == len(row["messages"]) // 2 and family["call"] in runs[0]
    assert runs[0].startswith(family["call"]) or family["name"] == "qwen3"  # after <think>
    assert len(runs) == 1 or "Done: task 0" in runs[1]


def _data(tmp_path, stage_params, fam, max_length: int, preview: int = 0) -> tuple[dict, Path]:
    from llmops.stages import data

    path = tmp_path / "rows.jsonl"
    if not path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    p = stage_params("data", *fam["overrides"], "data=files", f"data.path={path}",
                     f"data.max_length={max_length}", f"data.preview={preview}",
                     "data.val_fraction=0.1", "data.test_fraction=0.1")
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("test"))
    return data.run(p, fam["inputs"], out, ctx), out


def _sft_loader(stage_params, fam, run_dir: Path):
    """Returns a function: (data folder, max_length) -> sft's (train, val, info), tokenizer: the
    hf backend's own model load (once) and its dataset load at that train.max_length."""
    from llmops.backends import hf

    params = stage_params("sft", *fam["overrides"])
    ctx = StageContext(run_dir=run_dir, show_progress=False, logger=logging.getLogger("test"))
    _, tok = hf.load_model(params, str(fam["folder"]), ctx)

    def load(data_dir: Path, max_length: int):
        at = copy.deepcopy(params)
        at["train"]["max_length"] = max_length
        return hf.load_datasets(data_dir, tok, at), tok

    return load


def _longest(tok) -> int:
    """The longest of ROWS in the data stage's own measure (data/lengths.py) of the tokenizer."""
    from llmops.data.lengths import TOKENS, TokenCounter

    batch = {"messages": [r["messages"] for r in ROWS],
             "tools": [json.dumps(r["tools"]) for r in ROWS]}
    return max(TokenCounter(tok)(batch, list(range(len(ROWS))))[TOKENS])


def test_a_row_the_data_stage_keeps_at_the_limit_is_what_sft_trains_on(
        tmp_path, stage_params, family, capsys):
    from llmops.errors import StageError

    limit = _longest(family["tokenizer"])
    capsys.readouterr()
    at_limit, out = _data(tmp_path, stage_params, family, limit, preview=len(ROWS))
    assert at_limit["counts"]["rejected"] == 0 and at_limit["token_lengths"]["max"] == limit
    assert at_limit["token_lengths"]["method"] == "chat_template"
    # The run prints the first preview row, the trained call marked (« » outside a terminal).
    printed = capsys.readouterr().out
    assert "as the model trains on it" in printed
    assert "«" + family["call"].split('"title"')[0] in printed
    # All rows, the longest included, as one train.jsonl: sft accepts them at the same limit.
    whole = tmp_path / "whole"
    whole.mkdir()
    lines = [ln for n in ("train", "val", "test")
             for ln in (out / f"{n}.jsonl").read_text("utf-8").splitlines()]
    (whole / "train.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    sft_rows = _sft_loader(stage_params, family, tmp_path)
    (train, _, info), tok = sft_rows(whole, limit)
    assert max(len(ids) for ids in train["input_ids"]) == limit
    # The preview (data stage) shows sft's tokens and loss mask exactly, row by row.
    (own, _, _), _ = sft_rows(out, limit)
    preview = at_limit["preview"]
    assert preview["mask"] == info["mask"] and len(preview["rows"]) == len(own)
    for shown, ids, mask in zip(preview["rows"], own["input_ids"], own["assistant_masks"],
                                strict=True):
        assert shown["tokens"] == len(ids) and shown["loss_tokens"] == sum(mask)
        assert "".join(s["text"] for s in shown["segments"]) == tok.decode(
            ids, skip_special_tokens=False)
        assert [s["text"] for s in shown["segments"] if s["loss"]] == _runs(tok, ids, mask)
        assert not any(DOUBLE.search(s["text"]) for s in shown["segments"])
    # One token over: the data stage rejects the longest rows, sft refuses them.
    over, _ = _data(tmp_path, stage_params, family, limit - 1)
    assert over["counts"]["rejected"] >= 1 and over["token_lengths"]["max"] <= limit - 1
    with pytest.raises(StageError, match=f"longer than train.max_length={limit - 1}"):
        sft_rows(whole, limit - 1)


def test_no_stage_hands_a_template_a_string_argument(family, monkeypatch, tmp_path):
    """Every stage's render path, through a tokenizer that records what its template receives."""
    from llmops.backends import generation, heldout, templates
    from llmops.backends.dpo import pair_dataset
    from llmops.data import lengths
    from llmops.serving.modelfile import TOOL_CONVERSATIONS
    from llmops.stages import gguf

    tok = family["tokenizer"]
    seen: list = []
    real = tok.apply_chat_template

    def recording(conversation, *args, **kwargs):
        seen.append((conversation, kwargs.get("tools")))
        out = real(conversation, *args, **kwargs)
        text = out if isinstance(out, str) else tok.decode(
            out["input_ids"] if not isinstance(out, list) else out, skip_special_tokens=False)
        assert not DOUBLE.search(text), text
        return out

    monkeypatch.setattr(tok, "apply_chat_template", recording)
    row = family["row"]
    batch = {"messages": [row["messages"]], "tools": [json.dumps(TOOLS)]}
    lengths.TokenCounter(tok)(batch, [0])  # data: lengths
    templates.training_tokens(tok, row, templates.mask_method(tok), True)  # sft
    heldout.answer_tokens(tok, row, 4096)  # eval: held-out loss
    generation.build_prompt(tok, row["messages"], row["tools"])  # eval: prompts
    generation.render_answer(tok, row["messages"][:3], row["tools"])
    gguf.template_probes(tok)  # gguf parity probes
    templates.answer_parser(tok)
    assert len(seen) >= 8
    for conversation, tools in seen:
        for m in conversation:
            for c in m.get("tool_calls") or []:
                assert isinstance(c["function"]["arguments"], dict), conversation
        assert tools is None or isinstance(tools, list)
    # DPO hands TRL's DPOTrainer the pairs in the same form (it renders them itself).
    pairs = pair_dataset([{"prompt": row["messages"][:2], "chosen": row["messages"][2:3],
                           "rejected": [{"role": "assistant", "content": "No."}],
                           "tools": TOOLS}])
    assert pairs[0]["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {
        "title": "buy milk", "priority": 1}
    assert TOOL_CONVERSATIONS  # the Modelfile check and gguf probes use object arguments too


def test_no_module_calls_a_template_but_through_the_one_render():
    root = Path(__file__).parents[2] / "llmops"
    calls = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py")
             for n, line in enumerate(p.read_text("utf-8").splitlines(), 1)
             if re.search(r"\.apply_chat_template\(|render_jinja_template\(", line)
             and not line.lstrip().startswith("#")]
    # chat.render, and the tiny tokenizer's corpus (rendered from chat.template_messages)
    assert {c.split(":")[0] for c in calls} == {"data/chat.py", "backends/tiny.py"}, calls


def test_trained_calls_parse_with_the_family_parser_and_double_encoded_ones_do_not(family):
    from llmops.backends.templates import answer_parser, mask_method, training_tokens
    from llmops.scoring.parsers import get_parser
    from llmops.scoring.split import score_split

    tok = family["tokenizer"]
    got = training_tokens(tok, family["row"], mask_method(tok), True)
    trained = _runs(tok, got["input_ids"], got["assistant_masks"])[0]
    for end in (tok.eos_token, "<|im_end|>", "<|eot_id|>"):
        trained = trained.split(end)[0]
    expected = [{"name": "create_task", "arguments": {"title": "buy milk", "priority": 1}}]
    for parse in (answer_parser(tok), get_parser(family["syntax"])):
        parsed = parse(trained)  # one decode: the arguments are an object already
        assert parsed.calls == expected and not parsed.errors and parsed.double_encoded == 0
        doubled = parse(trained.replace('{"title": "buy milk", "priority": 1}',
                                        json.dumps('{"title": "buy milk", "priority": 1}'))
                        .replace('{"title":"buy milk","priority":1}',
                                 json.dumps('{"title":"buy milk","priority":1}')))
        assert doubled.calls == [] and doubled.double_encoded == 1, doubled
        assert "double-encoded" in doubled.errors[0]
    rows = [{"tools": TOOLS, "messages": ROWS[0]["messages"][:3]}] * 2
    doubled_text = trained.replace('{"title": "buy milk", "priority": 1}', json.dumps(
        '{"title": "buy milk", "priority": 1}')).replace('{"title":"buy milk","priority":1}',
                                                         json.dumps('{"title":"buy milk",'
                                                                    '"priority":1}'))
    metrics = score_split(rows, [trained, doubled_text], answer_parser(tok))["metrics"]
    assert metrics["exact_match"] == 0.5 and metrics["json_valid_rate"] == 0.5
    assert metrics["double_encoded_rate"] == 0.5
