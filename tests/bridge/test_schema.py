"""Typed answers (``rlm.bridge.schema``): specs to JSON Schema, validation, replies, words."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypedDict

import pydantic
import pytest

from rlm.bridge import schema
from rlm.bridge.schema import SchemaError, build, describe, parse_reply, to_json_schema, validate


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Person(TypedDict, total=False):
    name: str
    age: int


@dataclass
class Point:
    x: int
    y: float = 0.0
    tags: list[str] = field(default_factory=list)


class Invoice(pydantic.BaseModel):
    number: str
    total: float
    lines: list[Point] = []
    status: Literal["paid", "open"] | None = None


# -- specs -> JSON Schema -----------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (list, {"type": "array"}),
    (dict, {"type": "object"}),
    (Any, {}),
    (list[str], {"type": "array", "items": {"type": "string"}}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (Literal["a", "b"], {"enum": ["a", "b"]}),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # noqa: UP045
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                       "minItems": 2, "maxItems": 2}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (Annotated[int, "a note"], {"type": "integer"}),
    (Colour, {"enum": ["red", "blue"]}),
    (list[Literal["spam", "ham"]], {"type": "array", "items": {"enum": ["spam", "ham"]}}),
])
def test_python_types_become_json_schema(spec, expected):
    assert to_json_schema(spec) == expected


def test_typeddict_and_dataclass_become_objects():
    assert to_json_schema(Person) == {
        "title": "Person", "type": "object", "additionalProperties": False, "required": [],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    point = to_json_schema(Point)
    assert point["required"] == ["x"] and point["additionalProperties"] is False
    assert point["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}


def test_a_pydantic_model_gives_its_own_schema_with_refs():
    made = to_json_schema(Invoice)
    assert made == Invoice.model_json_schema() and "$defs" in made
    assert validate({"number": "A1", "total": 3, "lines": [{"x": 1}]}, made) == []
    assert validate({"number": "A1", "total": 3, "lines": [{"x": "no"}]}, made) == [
        "$.lines[0].x: expected integer, got string \"no\""]


def test_a_json_schema_dict_is_checked_and_copied():
    given = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}},
             "required": ["n"], "title": "kept", "description": "kept too"}
    made = to_json_schema(given)
    assert made == given and made is not given


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "integr"}, "'integr' is not a JSON type"),
    ({"type": "object", "patternProperties": {}}, "'patternProperties'"),
    ({"not": {"type": "string"}}, "'not' is not supported"),
    ({"items": [{"type": "string"}]}, "must be a schema"),
    ({"anyOf": []}, "must be a list of schemas"),
    ({"$ref": "#/$defs/Missing"}, "points to nothing"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"minItems": -1}, "whole number"),
    ({"pattern": "("}, "not a regular expression"),
    ({"enum": []}, "non-empty list"),
    ({"properties": {"a": {"type": "strin"}}}, "schema $.properties['a'].type"),
    ({"type": "string", "default": object()}, "not a JSON value"),
    (set[int], "cannot turn"),
    (bytes, "cannot turn"),
    ("int", "cannot turn"),
    ([1], "cannot turn"),
    (dict[int, str], "keys are strings"),
    (Literal[b"x"], "is not a JSON string"),
])
def test_unsupported_specs_are_a_clear_type_error(spec, message):
    with pytest.raises(TypeError, match="schema") as caught:
        to_json_schema(spec)
    assert message in str(caught.value)


@dataclass
class Node:
    children: list[Node]


def test_a_recursive_dataclass_is_refused():
    with pytest.raises(TypeError, match="refers to itself"):
        to_json_schema(Node)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "spec", "errors"), [
    (3, int, []),
    (3.0, int, []),  # JSON's 3.0 is an integer
    (True, int, ["$: expected integer, got boolean true"]),
    (1, bool, ["$: expected boolean, got integer 1"]),
    (2.5, int, ["$: expected integer, got number 2.5"]),
    (1, float, []),
    ("x", int, ['$: expected integer, got string "x"']),
    (None, Optional[int], []),  # noqa: UP045
    ("c", Literal["a", "b"], ['$: "c" is not one of "a", "b"']),
    (1, Literal[True], ["$: 1 is not one of true"]),
    (["a", 2], list[str], ["$[1]: expected string, got integer 2"]),
    ([1, "a", 3], tuple[int, str], ["$: 3 items, more than 2"]),
    ({"a": "1"}, dict[str, int], ['$.a: expected integer, got string "1"']),
    ({"x": 1, "z": 2}, Point, ['$: unexpected key "z"']),
    ({}, Point, ['$: missing "x"']),
    ("RED", Colour, ['$: "RED" is not one of "red", "blue"']),
])
def test_validate_lists_what_is_wrong(value, spec, errors):
    assert validate(value, to_json_schema(spec)) == errors


def test_validate_the_remaining_keywords():
    assert validate(5, {"type": ["integer", "null"], "minimum": 6}) == ["$: 5 breaks minimum 6"]
    assert validate(5, {"exclusiveMaximum": 5}) == ["$: 5 breaks exclusiveMaximum 5"]
    assert validate(7, {"multipleOf": 2}) == ["$: 7 is not a multiple of 2"]
    assert validate("ab", {"minLength": 3}) == ["$: shorter than 3 characters"]
    assert validate("abcd", {"maxLength": 3}) == ["$: longer than 3 characters"]
    assert validate("a1", {"pattern": "^[a-z]+$"}) == ['$: "a1" does not match /^[a-z]+$/']
    assert validate([], {"minItems": 1}) == ["$: 0 items, fewer than 1"]
    assert validate([1, 1], {"uniqueItems": True}) == ["$: the items are not unique"]
    assert validate("x", {"const": "y"}) == ['$: expected "y", got "x"']
    assert validate(1, {"oneOf": [{"type": "integer"}, {"type": "number"}]}) == [
        "$: matches 2 of the forms, exactly one is allowed"]
    assert validate("x", {"anyOf": [{"type": "integer"}, {"type": "null"}]}) == [
        '$: matches none of the allowed forms ($: expected integer, got string "x"; '
        '$: expected null, got string "x")']
    assert validate(3, {"allOf": [{"minimum": 1}, {"maximum": 2}]}) == ["$: 3 breaks maximum 2"]
    assert validate({"a": 1}, {"maxProperties": 0}) == ["$: more than 0 keys"]
    assert validate(1, False) == ["$: no value is allowed here"]
    assert validate({"k": [1, "x"]}, {"$defs": {"L": {"items": {"type": "integer"}}},
                                      "additionalProperties": {"$ref": "#/$defs/L"}}) == [
        '$.k[1]: expected integer, got string "x"']


def test_validate_caps_the_number_of_messages():
    errors = validate(list(range(50)), {"items": {"type": "string"}})
    assert len(errors) == 11 and errors[-1] == "... and 40 more"


# -- replies -> values --------------------------------------------------------------------------
LABELS = to_json_schema(list[Literal["a", "b"]])


@pytest.mark.parametrize(("reply", "spec", "value"), [
    ("42", int, 42),
    (" 42\n", int, 42),
    ("The answer is 42.", int, 42),
    ("```json\n[\"a\", \"b\"]\n```", list[Literal["a", "b"]], ["a", "b"]),
    ("Here you go:\n```\n[\"b\"]\n```\nHope it helps!", list[Literal["a", "b"]], ["b"]),
    ("Sure! The labels are [\"a\", \"a\", \"b\"] as asked.", list[Literal["a", "b"]],
     ["a", "a", "b"]),
    ("['a', 'b']", list[Literal["a", "b"]], ["a", "b"]),  # a Python literal
    ("<think>maybe [1]</think>[\"a\"]", list[Literal["a", "b"]], ["a"]),
    ("Paris", str, "Paris"),
    ('"Paris"', str, "Paris"),
    ("42", str, "42"),
    ("spam", Literal["spam", "ham"], "spam"),
    ("`ham`.", Literal["spam", "ham"], "ham"),
    ("Spam", Literal["spam", "ham"], "spam"),
    ("I would say it is ham.", Literal["spam", "ham"], "ham"),
    ('{"x": 1} and then {"x": 2, "y": 1.5}', Point, {"x": 1}),
    ('Point: {"x": "one"}, or rather {"x": 1}', Point, {"x": 1}),
    ("null", Optional[int], None),  # noqa: UP045
    ("true", bool, True),
    ("[1, \"a\"]", tuple[int, str], [1, "a"]),
])
def test_parse_reply_finds_the_value(reply, spec, value):
    assert parse_reply(reply, to_json_schema(spec)) == value


@pytest.mark.parametrize(("reply", "spec", "message"), [
    ("no idea", int, "the reply holds no JSON value (an integer wanted)"),
    ('{"x": "a"}', Point, '$.x: expected integer, got string "a"'),
    ('["a", "c"]', list[Literal["a", "b"]], '$[1]: "c" is not one of "a", "b"'),
    ("it is spam or ham", Literal["spam", "ham"], "spam or ham"),
    ("", str, "shorter than 1"),
])
def test_parse_reply_raises_schema_error_with_the_errors(reply, spec, message):
    json_schema = to_json_schema(spec) if spec is not str else {"type": "string",
                                                                 "minLength": 1}
    with pytest.raises(SchemaError) as caught:
        parse_reply(reply, json_schema)
    assert isinstance(caught.value, ValueError) and message in str(caught.value)
    assert caught.value.errors


# -- words for prompts --------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "words"), [
    (int, "an integer"),
    (list[str], "a JSON list of strings"),
    (Literal["a", "b"], 'one of: "a", "b"'),
    (list[Literal["a", "b"]], 'a JSON list, each item one of: "a", "b"'),
    (int | None, "an integer or null"),
    (dict[str, int], "a JSON object mapping strings to integers"),
    (tuple[int, str], "a JSON list of exactly 2 items: an integer, a string"),
    (Point, 'a JSON object with keys "x" (an integer), "y" (a number, optional), "tags" '
            '(a JSON list of strings, optional) and no others'),
    (Any, "any JSON value"),
    ({"type": "integer", "minimum": 1}, "an integer (>= 1)"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 3},
     "a JSON list of integers (0 to 3 items)"),
])
def test_describe_says_the_shape_in_a_few_words(spec, words):
    assert describe(to_json_schema(spec)) == words


def test_describe_follows_refs_and_shows_field_descriptions():
    class Item(pydantic.BaseModel):
        sku: str = pydantic.Field(description="the stock code")

    class Order(pydantic.BaseModel):
        items: list[Item]

    assert describe(to_json_schema(Order)) == (
        'a JSON object with keys "items" (a JSON list, each item a JSON object with keys '
        '"sku" (a string: the stock code))')


def test_the_prompt_texts_name_the_format():
    json_schema = to_json_schema(list[int])
    assert "a JSON list of integers" in schema.format_instruction(json_schema)
    repair = schema.repair_prompt(SchemaError(["$[0]: expected integer"]), json_schema)
    assert "$[0]: expected integer" in repair and json.dumps(json_schema) in repair
    assert "Reply with only JSON matching the schema" in repair
    assert schema.answer_problem("[1, 2]", json_schema) is None
    problem = schema.answer_problem("one, two", json_schema)
    assert problem is not None and "a JSON list of integers" in problem
    assert schema.output_of("[1]", json_schema) == ([1], None)
    assert schema.output_of("x", None) == (None, None)
    value, error = schema.output_of("x", json_schema)
    assert value is None and error is not None and error.startswith("the answer does not match")


# -- values -> the spec's Python form -----------------------------------------------------------
def test_build_gives_the_python_form_of_the_spec():
    assert build(3, float) == 3.0 and isinstance(build(3, float), float)
    assert build(3.0, int) == 3 and isinstance(build(3.0, int), int)
    assert build([1, "a"], tuple[int, str]) == (1, "a")
    assert build([1, 2], tuple[int, ...]) == (1, 2)
    assert build("red", Colour) is Colour.RED
    assert build({"x": 1, "tags": ["t"]}, Point) == Point(1, 0.0, ["t"])
    assert build([{"x": 1}], list[Point]) == [Point(1)]
    assert build({"k": [1]}, dict[str, tuple[int, ...]]) == {"k": (1,)}
    assert build(None, Point | None) is None and build({"x": 2}, Point | None) == Point(2)
    assert build({"a": 1}, {"type": "object"}) == {"a": 1}
    invoice = build({"number": "A1", "total": 2, "lines": [{"x": 1}]}, Invoice)
    assert isinstance(invoice, Invoice) and invoice.lines == [Point(1)]


# -- shipped as files -----------------------------------------------------------------------------
def test_the_shipped_files_work_without_the_package(tmp_path: Path):
    for name in ("schema.py", "validation.py"):
        (tmp_path / name).write_bytes(resources.files("rlm.bridge").joinpath(name).read_bytes())
    (tmp_path / "probe.py").write_text(
        "import os, sys\n"
        "sys.modules['rlm'] = None  # as in a sandbox without the package\n"
        "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
        "import schema, typing\n"
        "s = schema.to_json_schema(list[typing.Literal['a']])\n"
        "print(schema.parse_reply('```\\n[\"a\"]\\n```', s), schema.describe(s))\n")
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "probe.py")], text=True,
                         capture_output=True, check=True).stdout
    assert out.strip() == "['a'] a JSON list, each item one of: \"a\""
