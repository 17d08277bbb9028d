"""llmops.data.jsontext: orjson where it reads exactly what json reads, json for the rest."""

from __future__ import annotations

import json

import pytest

from llmops.data import jsontext

SAME_AS_JSON = [
    '{"a": 1, "b": 1.0, "c": true, "d": null, "e": [1.5e-3, -0.0, 1E5]}',
    '{"a": 1, "a": 2}',  # the last duplicate wins in both
    "NaN", "[Infinity, -Infinity]", "1e400", '{"x": -1e400}',  # json only: floats out of range
    "1234567890123456789", "-1234567890123456789", "18446744073709551616",  # past 64 bits
    '{"id": 123456789012345678901234567890}', "-99999999999999999999",
    '"\\ud800"', '{"k": "a\\udfffb"}',  # lone surrogates (json keeps them)
    '"\\ud83d\\ude00"', '"caf\\u00e9 \u00e9"', "9223372036854775807",
]


@pytest.mark.parametrize("text", SAME_AS_JSON)
def test_loads_returns_what_json_loads_returns_with_the_same_types(text):
    got, want = jsontext.loads(text), json.loads(text)
    assert repr(got) == repr(want)  # repr: NaN equals itself, 1 and 1.0 and True differ
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize("text", ['{"a": 1,}', "[1, 2", '"a\tb"', "01", "{'a': 1}", "",
                                  '{"a": NaN1}'])
def test_loads_raises_json_s_own_error_for_invalid_text(text):
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jsontext.loads(text)
    assert (got.value.msg, got.value.colno) == (want.value.msg, want.value.colno)


def test_key_tells_values_apart_that_compare_equal():
    keys = {jsontext.key(v) for v in ([1], [1.0], [True], ["1"])}
    assert len(keys) == 4
    for value in ([{"type": "integer", "maximum": 1}], [{"maximum": 1.0}], [True, "é"]):
        assert repr(json.loads(jsontext.key(value))) == repr(value)


@pytest.mark.parametrize("value", [[float("nan")], [float("inf")], [2 ** 70], [None],
                                   [{"default": None}]])
def test_key_is_none_where_orjson_would_blur_values(value):
    assert jsontext.key(value) is None
