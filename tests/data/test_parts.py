"""Content parts, reasoning and the refusal of images/audio/video (``llmops.data.parts``), and the
untrusted-input rules on them: one bad message is one reject with its code."""

from __future__ import annotations

import pytest

from tests.data.test_convert import convert

USER = {"role": "user", "content": "Hi"}


def reject(messages: list, fmt: str = "openai", **row) -> dict | None:
    return convert(fmt, [{"messages": messages, **row}])["reject"][0]


def test_text_part_of_either_spelling_is_text_and_the_old_contradiction_is_gone():
    out = convert("openai", [{"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Hi "}, {"type": "text",
                                                                         "text": "there"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "Hello."}]}]}])
    assert out["reject"] == [None]
    assert out["messages"][0][0]["content"] == "Hi there"
    bad = reject([{"role": "user", "content": [{"type": "sticker", "value": "x"}]}])
    assert bad["code"] == "content_part" and bad["path"] == "messages[0].content[0].type"
    assert bad["message"].startswith("content part of type 'sticker' is not one llmops reads")
    assert "only text parts" not in bad["message"]


@pytest.mark.parametrize("part,kind", [
    ({"type": "image_url", "image_url": {"url": "https://x/cat.png"}}, "image"),
    ({"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}, "audio"),
    ({"type": "video", "video": "clip.mp4"}, "video"),
])
def test_media_parts_are_refused_by_name(part, kind):
    bad = reject([{"role": "user", "content": [{"type": "text", "text": "Look"}, part]},
                  {"role": "assistant", "content": "ok"}])
    assert bad == {"code": "unsupported_modality", "path": "messages[0].content[1].type",
                   "message": f"holds a content part of type {part['type']!r}. llmops trains "
                              "text models; drop these rows with data.on_unsupported=drop or "
                              "convert them to text."}


@pytest.mark.parametrize("column", ["images", "audios", "videos", "image"])
def test_media_columns_and_markers_are_refused(column):
    bad = reject([USER, {"role": "assistant", "content": "ok"}], **{column: ["a.bin"]})
    assert bad["code"] == "unsupported_modality" and bad["path"] == column
    marker = reject([{"role": "user", "content": "<audio>What is said?"},
                     {"role": "assistant", "content": "Hello."}])
    assert marker["code"] == "unsupported_modality"
    assert marker["path"] == "messages[0].content"
    assert reject([USER, {"role": "assistant", "content": "ok"}], images=[]) is None


@pytest.mark.parametrize("message,code", [
    ({"role": "assistant", "content": "<think>never closed"}, "unclosed_think"),
    ({"role": "assistant", "content": "<think>a</think>b<think>c</think>d"}, "stray_think"),
    ({"role": "assistant", "content": "x", "reasoning_content": {"steps": [1, 2]}},
     "bad_reasoning"),
    ({"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "a"},
     "reasoning_twice"),
    ({"role": "assistant", "content": "ok", "reasoning_content": "x <think> y"}, "stray_think"),
    ({"role": "user", "content": [{"type": "reasoning", "value": "hm"}]},
     "reasoning_not_assistant"),
    ({"role": "user", "content": [{"type": "tool_call", "value": "{}"}]}, "call_not_assistant"),
    ({"role": "assistant", "content": [{"type": "tool_call", "value": "{name: x"}]},
     "tool_call_not_json"),
    ({"role": "assistant", "content": [{"type": "tool_call", "value": "[" * 200 + "]" * 200}]},
     "too_deep"),
])
def test_reasoning_and_call_parts_are_checked(message, code):
    assert reject([USER, message])["code"] == code


def test_loss_weight_is_the_weight_and_a_refusal_part_is_text():
    out = convert("openai", [{"messages": [
        USER, {"role": "assistant", "content": "Draft.", "loss_weight": 0.0},
        USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}],
               "loss_weight": 1}]}])
    assert out["reject"] == [None]
    assert [m["weight"] for m in out["messages"][0][1::2]] == [0.0, 1.0]
    assert out["messages"][0][3]["content"] == "I can't."
    half = reject([USER, {"role": "assistant", "content": "x", "loss_weight": 0.5}])
    assert half["code"] == "bad_weight" and half["path"] == "messages[1].loss_weight"


def test_reasoning_reaches_sharegpt_alpaca_and_completion_rows():
    share = convert("sharegpt", [{"conversations": [
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "<think>\nadd\n</think>\n4"}]}])
    assert share["messages"][0][1]["reasoning_content"] == "add"
    assert share["messages"][0][1]["content"] == "4"
    alpaca = convert("alpaca", [{"instruction": "2+2?", "output": "<think>add</think>4"}])
    assert alpaca["messages"][0][1]["reasoning_content"] == "add"
    completion = convert("completion", [{"prompt": "2+2?", "completion": "<think></think>4"}])
    assert completion["messages"][0][1]["reasoning_content"] is None  # an empty trace is none
    assert completion["messages"][0][1]["content"] == "4"
