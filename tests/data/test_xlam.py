"""xLAM rows and its parameter notation as JSON Schema (``llmops.data.xlam``)."""

from __future__ import annotations

import json

import pytest

from llmops.data import canonical
from llmops.data.limits import Limits
from llmops.data.xlam import parameters_schema, type_schema
from tests.data.test_convert import convert


@pytest.mark.parametrize("notation,schema", [
    ("str", {"type": "string"}), ("int", {"type": "integer"}), ("float", {"type": "number"}),
    ("bool", {"type": "boolean"}), ("List[str]", {"type": "array", "items": {"type": "string"}}),
    ("List[List[int]]", {"type": "array", "items": {"type": "array",
                                                    "items": {"type": "integer"}}}),
    ("list", {"type": "array"}), ("Dict", {"type": "object"}),
    ("Dict[str, int]", {"type": "object", "additionalProperties": {"type": "integer"}}),
    ("Dict[str, Any]", {"type": "object"}), ("Any", {}),
    ("Optional[int]", {"type": "integer"}),
    ("Union[int, str]", {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    ("str or int", {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
    ("Tuple[float, ...]", {"type": "array", "items": {"type": "number"}}),
    ("Literal['asc', 'desc']", {"enum": ["asc", "desc"]}), ("Callable", {}),
])
def test_type_notation_becomes_json_schema(notation, schema):
    assert type_schema(notation, "p") == schema


def test_optional_and_default_are_not_required_and_the_default_is_kept():
    out = parameters_schema({"q": {"type": "str", "description": "Query."},
                             "n": {"type": "int, optional", "description": "Count."},
                             "sort": {"type": "str, optional, default='asc'"},
                             "lang": {"type": "str", "default": "en"}}, "tools[0].parameters")
    assert out == {"type": "object", "required": ["q"], "properties": {
        "q": {"type": "string", "description": "Query."},
        "n": {"type": "integer", "description": "Count."}, "sort": {"type": "string"},
        "lang": {"type": "string", "default": "en"}}}
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    assert parameters_schema(schema, "p") is schema


@pytest.mark.parametrize("notation,code", [
    ("Callable[[int], int]", "xlam_type"), ("pandas.DataFrame", "xlam_type"),
    ("np.ndarray", "xlam_type"),
    ("List[" * 8 + "int" + "]" * 8, "too_deep"), ("x" * 300, "xlam_type"),
])
def test_notation_it_cannot_read_is_one_reject(notation, code):
    row = {"query": "q", "answers": json.dumps([{"name": "f", "arguments": {}}]),
           "tools": json.dumps([{"name": "f", "parameters": {"a": {"type": notation}}}])}
    limits = Limits(row_bytes=1 << 20, json_depth=6, pattern_seconds=1.0,
                    template_seconds=1.0, glob_files_warn=100)
    out = convert("xlam", [row], limits=limits)
    assert out["reject"][0]["code"] == code
    with pytest.raises(canonical.Rejected):
        parameters_schema({"a": {"type": notation}}, "p", max_depth=6)


def test_rows_without_answers_or_query_are_rejects():
    out = convert("xlam", [{"query": "q", "answers": "[]", "tools": "[]"},
                           {"query": "", "answers": "[]", "tools": "[]"},
                           {"query": "q", "answers": "not json", "tools": "[]"}])
    assert [r["code"] for r in out["reject"]] == ["bad_field", "bad_field", "bad_field"]
