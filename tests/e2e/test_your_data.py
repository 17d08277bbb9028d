"""A user's own data, end to end: every format's fixture under tests/data/ is read, checked,
counted and written in the OpenAI form; dirty rows are rejected line by line in data_report.json;
``data.on_error=fail`` stops a real run before training; mixtures take weights and samples; the
rows' ``tools`` reach the chat template TRL trains through; real plans train on the tiny default.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.stages import data

DATA = Path(__file__).parents[1] / "data"
QUICK = ("model.pretrain.n_examples=200", "model.pretrain.steps=30",
         "model.pretrain.batch_size=8", "model.pretrain.legacy_tools=[]")
CUSTOM = ("data.columns.messages=dialog", "data.columns.tools=functions",
          "data.columns.system=persona", "data.tags.role=speaker", "data.tags.content=text",
          "data.tags.user=customer", "data.tags.assistant=agent",
          "data.tags.function_call=tool_use", "data.tags.observation=result")


def sources_override(sources: list[dict]) -> str:
    """Returns data.sources=[...] in Hydra's override grammar (keys bare, strings quoted)."""
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return f"'{v}'" if isinstance(v, str) else str(v)

    return "data.sources=[" + ", ".join(value(s) for s in sources) + "]"


def run_stage(tmp_path: Path, params: dict, name: str = "out") -> tuple[dict, Path]:
    out = tmp_path / name
    out.mkdir()
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.your_data"),
                       show_progress=False)
    data.run(params, {}, out, ctx)
    return json.loads((out / "data_report.json").read_text()), out


def rows_of(out: Path, split: str = "train") -> list[dict]:
    return [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]


def all_rows(out: Path, prefix: str = "") -> list[dict]:
    return [r for s in ("train", "val", "test") for r in rows_of(out, prefix + s)]


@pytest.mark.parametrize("name, overrides, fmt, kind, counts", [
    ("openai_tools.jsonl", (), "openai", "chat", {"rows_with_calls": 3, "rows_with_tools": 3}),
    ("sharegpt_tools.json", (), "sharegpt", "chat", {"rows_with_calls": 2, "rows_with_tools": 2}),
    ("sharegpt_custom.jsonl", ("data.format=sharegpt", *CUSTOM), "sharegpt", "chat",
     {"rows_with_calls": 1, "rows_with_tools": 1}),
    ("alpaca.json", (), "alpaca", "chat", {"rows_with_calls": 0, "rows_with_tools": 0}),
    ("completion.jsonl", (), "completion", "chat", {"rows_with_calls": 0, "rows_with_tools": 0}),
    ("text.jsonl", (), "text", "text", {"rows_with_calls": 0, "rows_with_tools": 0}),
    ("pairs.jsonl", (), "preference", "preference", {"rows_with_calls": 1,
                                                     "rows_with_tools": 1}),
    ("sharegpt_pairs.json", (), "sharegpt_preference", "preference",
     {"rows_with_calls": 1, "rows_with_tools": 1}),
])
def test_each_format_fixture_is_read_checked_and_counted(tmp_path, stage_params, name,
                                                         overrides, fmt, kind, counts):
    report, out = run_stage(tmp_path, stage_params("data", "data=files",
                                                   f"data.path={DATA / name}", *overrides))
    n = report["counts"]["read"]
    assert report["formats"] == {fmt: n} and report["kind"] == kind
    assert report["counts"]["valid"] == n and report["counts"]["rejected"] == 0
    assert {k: report["tool_calls"][k] for k in counts} == counts
    written = all_rows(out)
    assert len(written) == n and all(r["meta"]["format"] == fmt for r in written)
    assert all(r["meta"]["file"] == str(DATA / name) for r in written)
    if kind == "text":
        assert set(written[0]) == {"text", "meta"}
        return
    for row in written:
        for m in row["messages"]:
            for call in m.get("tool_calls") or []:
                assert isinstance(call["function"]["arguments"], str)
                assert call["function"]["name"] in {t["function"]["name"] for t in row["tools"]}
                assert m["content"] is None
            if m["role"] == "tool":  # every answer points at its call
                assert m["tool_call_id"] in {c["id"] for x in row["messages"]
                                             for c in x.get("tool_calls") or []}
    if kind == "preference":
        pairs = all_rows(out, "pref_")
        assert len(pairs) == n and report["preferences"]["method"] == "rows"
        for pair, row in zip(pairs, written, strict=True):
            assert row["messages"] == pair["prompt"] + pair["chosen"]
            assert pair["rejected"] != pair["chosen"]


def test_sharegpt_calls_become_tool_calls_answered_by_id(tmp_path, stage_params):
    _, out = run_stage(tmp_path, stage_params("data", "data=files",
                                              f"data.path={DATA / 'sharegpt_tools.json'}"))
    row = next(r for r in all_rows(out) if "call mom" in r["messages"][1]["content"])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool",
                                                    "assistant"]
    call = row["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "create_task",
                                "arguments": '{"title": "call mom", "priority": "high"}'}
    assert row["messages"][3]["tool_call_id"] == call["id"]
    assert row["meta"]["kind"] == "chat" and row["tools"][0]["type"] == "function"


DIRTY = [  # (file, line, row, code, JSON path)
    ("dirty_tools.jsonl", 2, 2, "unknown_tool", "messages[1].tool_calls[0].function.name"),
    ("dirty_tools.jsonl", 3, 3, "arguments_not_json",
     "messages[1].tool_calls[0].function.arguments"),
    ("dirty_tools.jsonl", 4, 4, "argument_type",
     "messages[3].tool_calls[0].function.arguments.due"),
    ("dirty_tools.jsonl", 5, 5, "argument_missing",
     "messages[1].tool_calls[0].function.arguments.title"),
    ("dirty_tools.jsonl", 6, 6, "orphan_tool_message", "messages[2].tool_call_id"),
    ("dirty_tools.jsonl", 7, 7, "null_content", "messages[1].content"),
    ("dirty_tools.jsonl", 8, 8, "argument_enum",
     "messages[1].tool_calls[0].function.arguments.priority"),
    ("dirty_tools.jsonl", 9, 9, "argument_unknown",
     "messages[1].tool_calls[0].function.arguments.colour"),
    ("dirty_tools.jsonl", 10, 10, "no_assistant_end", "messages[2].role"),
    ("dirty_tools.jsonl", 12, 11, "invalid_json", "$"),
    ("dirty_tools.jsonl", 13, 12, "bad_role_order", "messages[1].role"),
    ("broken_array.json", 46, 3, "invalid_json", "$"),
]


def test_dirty_fixtures_are_rejected_line_by_line_in_data_report(tmp_path, stage_params):
    sources = [{"path": str(DATA / "dirty_tools.jsonl")}, {"path": str(DATA / "broken_array.json")}]
    report, out = run_stage(tmp_path, stage_params(
        "data", "data=files", sources_override(sources)))
    listed = [(Path(r["file"]).name, r["line"], r["row"], r["code"], r["path"])
              for r in report["rejects"]]
    assert listed == DIRTY
    assert report["counts"]["rejected"] == 12 and report["counts"]["valid"] == 4
    assert report["rejects_by_code"]["invalid_json"] == 2
    assert sum(report["rejects_by_code"].values()) == 12
    first = report["rejects"][0]
    assert first["message"] == ("'craete_task' is not a tool the row declares (create_task, "
                                "list_tasks, complete_task). Did you mean 'create_task'? Fix the "
                                "name or declare it.")
    assert first["fix"] == "Fix the name or declare it."
    assert report["rejects"][-1]["message"].startswith(
        "element 2 of the JSON array is not valid JSON (Expecting ',' delimiter at line 52")
    per_source = {Path(s["name"]).name: s["counts"] for s in report["sources"]}
    assert (per_source["dirty_tools.jsonl"]["valid"], per_source["dirty_tools.jsonl"]["rejected"],
            per_source["broken_array.json"]["valid"],
            per_source["broken_array.json"]["rejected"]) == (1, 11, 3, 1)
    kept = {(Path(r["meta"]["file"]).name, r["meta"]["line"]) for r in all_rows(out)}
    assert kept == {("dirty_tools.jsonl", 1), ("broken_array.json", 2), ("broken_array.json", 24),
                    ("broken_array.json", 68)}


def _chat(i: int, tool: bool) -> dict:
    user = {"role": "user", "content": f"question {i}"}
    if not tool:
        return {"messages": [user, {"role": "assistant", "content": f"answer {i}"}]}
    call = {"id": f"c{i}", "type": "function",
            "function": {"name": "ping", "arguments": json.dumps({"n": i})}}
    return {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [call]}],
            "tools": [{"type": "function", "function": {"name": "ping", "parameters": {
                "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}]}


def test_a_mixture_takes_each_source_by_weight_or_samples(tmp_path, stage_params):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text("".join(json.dumps(_chat(i, True)) + "\n" for i in range(40)))
    b.write_text("".join(json.dumps(_chat(100 + i, False)) + "\n" for i in range(50)))
    c.write_text("".join(json.dumps({"instruction": f"say {i}", "output": str(i)}) + "\n"
                         for i in range(30)))
    sources = [{"path": str(a), "weight": 1.5}, {"path": str(b), "samples": 20},
               {"path": str(c), "format": "alpaca", "weight": 0.5}]
    params = stage_params("data", "data=files", sources_override(sources))
    report, out = run_stage(tmp_path, params)
    got = {Path(s["name"]).name: s["counts"] for s in report["sources"]}
    assert {k: (v["valid"], v["selected"], v["repeated"]) for k, v in got.items()} == {
        "a.jsonl": (40, 40, 20), "b.jsonl": (50, 20, 0), "c.jsonl": (30, 15, 0)}
    for counts in got.values():
        assert counts["train"] + counts["val"] + counts["test"] == counts["selected"] + counts[
            "repeated"]
    assert report["counts"]["repeated"] == 20
    assert report["counts"]["train"] + report["counts"]["val"] + report["counts"]["test"] == 95
    train, held = rows_of(out), rows_of(out, "val") + rows_of(out, "test")
    lines = [(r["meta"]["file"], r["meta"]["line"]) for r in train]
    repeated = {x for x in lines if lines.count(x) > 1}
    assert len(repeated) == 20 and all(f == str(a) for f, _ in repeated)
    assert not repeated & {(r["meta"]["file"], r["meta"]["line"]) for r in held}
    assert report["tool_calls"]["rows_with_calls"] == 40
    _, again = run_stage(tmp_path, params, "again")
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_every_file_of_every_source_is_in_the_fingerprint(tmp_path, compose_plan):
    from datasets import Dataset

    (tmp_path / "parts").mkdir()
    for i in range(2):
        (tmp_path / "parts" / f"p{i}.jsonl").write_text(json.dumps(_chat(i, False)) + "\n")
    Dataset.from_list([_chat(9, False)]).save_to_disk(str(tmp_path / "saved"))
    sources = [{"path": str(tmp_path / "parts" / "*.jsonl")}, {"path": str(tmp_path / "saved"),
                                                                "samples": 1}]
    overrides = ["data=files", sources_override(sources)]
    _, plan = compose_plan(overrides)
    stage = plan.stage("data")
    files = set(stage.input_files)
    saved = {str(f) for f in (tmp_path / "saved").rglob("*") if f.is_file()}
    assert files == {str(tmp_path / "parts" / "p0.jsonl"), str(tmp_path / "parts" / "p1.jsonl"),
                     *saved}
    assert all(h.startswith("xxh3_128:") for h in stage.input_files.values())
    assert stage.summary.startswith("*.jsonl + saved x1 rows -> checked (rejects reported)")
    (tmp_path / "parts" / "p1.jsonl").write_text(json.dumps(_chat(5, False)) + "\n")
    _, edited = compose_plan(overrides)
    assert edited.stage("data").fingerprint != stage.fingerprint
    assert edited.stage("data").params == stage.params


def test_tools_reach_the_chat_template_trl_trains_through(tmp_path, stage_params, tiny_base):
    """The rows' tools and calls, as the sft backend loads them, render through a template that
    shows tools (TRL's Qwen2.5 template on the tiny base's tokenizer) into the tokens TRL trains
    on, and the calls sit inside the trained (assistant) tokens."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmops.backends.hf import load_datasets

    sources = [{"path": str(DATA / "openai_tools.jsonl")},
               {"path": str(DATA / "sharegpt_tools.json")}]
    _, out = run_stage(tmp_path, stage_params("data", "data=files",
                                              sources_override(sources),
                                              "data.val_fraction=0", "data.test_fraction=0.01"))
    rows = rows_of(out)
    assert len([r for r in rows if r.get("tools")]) >= 4
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    params = stage_params("sft")
    # Qwen2.5's template writes every tool schema into the prompt: rows of ~1000 tokens, more than
    # the tiny model's 512-token context the compiled params allow; this test only renders them.
    params["train"]["max_length"] = 2048
    train, _, mask = load_datasets(out, tok, params)
    assert mask["mask"] == "trl_training_template"
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                     use_cpu=True, bf16=False, report_to="none",
                     max_length=2048, save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_base), args=args,
                         train_dataset=train, processing_class=tok)
    rendered = [tok.decode(x["input_ids"]) for x in trainer.train_dataset]
    trained = [tok.decode([t for t, label in zip(x["input_ids"], x["labels"], strict=True)
                           if label != -100]) for x in trainer.train_dataset]
    assert len(rendered) == len(rows)
    for text, learned, row in zip(rendered, trained, rows, strict=True):
        for tool in row.get("tools") or []:
            assert f'"name": "{tool["function"]["name"]}"' in text.split("<|im_start|>user")[0]
        for m in row["messages"]:
            for call in m.get("tool_calls") or []:
                assert f'"name": "{call["function"]["name"]}"' in learned
    assert trainer.train().training_loss > 0


def _cli(args: list[str], cwd: Path, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmops", *args, *QUICK, f"store_dir={store}",
                           "progress=false"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store the real runs of this module share (the first one builds the tiny base)."""
    return tmp_path_factory.mktemp("store")


@pytest.mark.parametrize("data_args", [
    [sources_override([{"path": str(DATA / "alpaca.json")},
                       {"path": str(DATA / "completion.jsonl")}])],
    [f"data.path={DATA / 'text.jsonl'}", "data.test_fraction=0.01"],
], ids=["alpaca+completion", "text"])
def test_a_users_files_train_on_the_tiny_default(tmp_path, store, compose_plan, data_args):
    """The plan `python -m llmops data=files ...` compiles, run by the runner in this process
    (its stages too): what reaches training is the test, not the command line (which
    test_on_error_fail... runs)."""
    from llmops.runner.run import run_plan

    _, plan = compose_plan(["data=files", *data_args, "train.max_steps=2", "eval=none",
                            "deploy=none", *QUICK, f"store_dir={store}", "progress=false"])
    manifest = run_plan(plan, tmp_path / "run", stage_process=False)
    assert manifest["status"] == "succeeded"
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["sft"]["status"] == "ran"
    report = json.loads((tmp_path / "run" / "training_report.json").read_text())
    assert report["steps"] == 2 and report["tokens_seen"] > 0 and report["final_loss"] > 0


def test_on_error_fail_exits_5_before_sft_runs(tmp_path, store):
    """A real run (on the store whose tiny base the runs above built, when they ran first)."""
    trained = set(store.rglob("adapter_model.safetensors"))
    r = _cli(["data=files", f"data.path={DATA / 'dirty_tools.jsonl'}", "data.on_error=fail",
              "data.max_length=4096", "hydra.run.dir=run"], tmp_path, store)
    assert r.returncode == 5, r.stderr[-3000:]
    assert "data: 11 rows rejected (" in r.stderr and "data.on_error=fail, so nothing trains" in (
        r.stderr)
    assert (f"{DATA / 'dirty_tools.jsonl'}:2 messages[1].tool_calls[0].function.name: "
            "[unknown_tool]") in r.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    status = {name: s["status"] for name, s in manifest["stages"].items()}
    assert manifest["failed_stage"] == "data" and status["data"] == "failed"
    assert status.get("sft") != "ran"
    assert set(store.rglob("adapter_model.safetensors")) == trained  # this run trained nothing
