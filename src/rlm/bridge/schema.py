"""Typed answers: a schema for ``llm_query(..., schema=...)`` and ``completion(schema=...)``.

One implementation for the host and the REPL: standard library only, so this file is shipped
into sandboxes next to ``guest.py``.  A *spec* is what a caller writes: a JSON Schema dict, a
Python type (``int``, ``float``, ``str``, ``bool``, ``list[str]``, ``dict[str, int]``,
``tuple[int, str]``, ``Literal["a", "b"]``, ``int | None``, an ``Enum``, a ``TypedDict``, a
dataclass) or an object with ``model_json_schema()`` (a pydantic model, duck-typed: pydantic
is never imported here).  ``to_json_schema(spec)`` turns it into a checked JSON Schema;
``validate(value, schema)`` lists what is wrong with a value; ``parse_reply(text, schema)``
finds the value in a model's reply (fences stripped, the first JSON value that matches, a
bare word for a string or an enum); ``describe(schema)`` says the shape in a few words for a
prompt; ``build(value, spec)`` turns parsed JSON back into the spec's Python form (a tuple,
a dataclass, an enum member, a pydantic model).

Only a subset of JSON Schema is understood (``SUPPORTED``; annotations such as ``title`` and
``description`` are kept and ignored); any other keyword is a ``TypeError`` up front rather
than a constraint silently ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

try:  # inside the package
    from rlm.bridge import validation
except ImportError:  # shipped as plain files next to this one
    import validation  # type: ignore[no-redef]

ANNOTATIONS, SUPPORTED, validate = validation.ANNOTATIONS, validation.SUPPORTED, validation.validate
check, is_kind, resolve, show = validation.check, validation.is_kind, validation.resolve, \
    validation.show

__all__ = [
    "SUPPORTED",
    "SchemaError",
    "answer_check",
    "answer_problem",
    "build",
    "describe",
    "format_instruction",
    "map_requests",
    "output_of",
    "parse_reply",
    "repair_prompt",
    "run_map",
    "to_json_schema",
    "validate",
]

_MAX_CANDIDATES = 200
_SCHEMA_IN_PROMPT = 4000


class SchemaError(ValueError):
    """A value (a model's reply, a final answer) does not match its schema."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


# -- specs -> JSON Schema ---------------------------------------------------------------------
def to_json_schema(spec: Any) -> dict[str, Any]:
    """The JSON Schema of ``spec`` (a dict is checked and copied); ``TypeError`` for a spec
    that is none of the supported forms or a schema with a keyword outside ``SUPPORTED``."""
    if isinstance(spec, dict):
        try:
            schema = json.loads(json.dumps(spec))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"schema: not a JSON value: {exc}") from None
    elif callable(getattr(spec, "model_json_schema", None)):
        schema = spec.model_json_schema()
        if not isinstance(schema, dict):
            raise TypeError(f"schema: {spec!r}.model_json_schema() is not a dict")
    else:
        schema = _from_type(spec, set())
    check(schema, "$", schema)
    return schema


def _from_type(spec: Any, seen: set[int]) -> dict[str, Any]:
    simple = {str: "string", int: "integer", float: "number", bool: "boolean",
              type(None): "null", list: "array", dict: "object", tuple: "array"}
    if spec is None or (isinstance(spec, type) and spec in simple):
        return {"type": simple[type(None) if spec is None else spec]}
    if spec is Any or spec is object:
        return {}
    origin, args = typing.get_origin(spec), typing.get_args(spec)
    if origin is typing.Annotated:
        return _from_type(args[0], seen)
    if origin is typing.Literal:
        return {"enum": [_scalar(value, spec) for value in args]}
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_from_type(arg, seen) for arg in args]}
    if origin in (list, typing.List):  # noqa: UP006
        return {"type": "array", **({"items": _from_type(args[0], seen)} if args else {})}
    if origin in (dict, typing.Dict):  # noqa: UP006
        if args and args[0] is not str:
            raise TypeError(f"schema: {spec!r}: JSON object keys are strings, use dict[str, ...]")
        return {"type": "object",
                **({"additionalProperties": _from_type(args[1], seen)} if args else {})}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _from_type(args[0], seen)}
        items = [] if args == ((),) else [_from_type(arg, seen) for arg in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items),
                "maxItems": len(items)}
    if isinstance(spec, type) and issubclass(spec, enum.Enum):
        return {"enum": [_scalar(member.value, spec) for member in spec]}
    if isinstance(spec, type) and (typing.is_typeddict(spec) or dataclasses.is_dataclass(spec)):
        if id(spec) in seen:
            raise TypeError(f"schema: {spec.__name__} refers to itself; recursive types are "
                            "not supported (give a JSON Schema with $ref)")
        return _record(spec, seen | {id(spec)})
    raise TypeError(f"schema: cannot turn {spec!r} into a JSON Schema; give a JSON Schema "
                    "dict, str, int, float, bool, None, list[...], dict[str, ...], "
                    "tuple[...], Literal[...], a union, an Enum, a TypedDict, a dataclass "
                    "or a pydantic model")


def _scalar(value: Any, spec: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"schema: {spec!r}: {value!r} is not a JSON string, number, bool or null")


def _hints(spec: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(spec)
    except Exception as exc:  # a forward reference that does not resolve
        raise TypeError(f"schema: the annotations of {spec.__name__} do not resolve: "
                        f"{exc}") from None


def _record(spec: type, seen: set[int]) -> dict[str, Any]:
    hints = _hints(spec)
    if dataclasses.is_dataclass(spec):
        names = [f.name for f in dataclasses.fields(spec)]
        required = [f.name for f in dataclasses.fields(spec)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
    else:
        names = list(hints)
        required = [name for name in names if name in getattr(spec, "__required_keys__", ())]
    return {"title": spec.__name__, "type": "object",
            "properties": {name: _from_type(hints.get(name, Any), seen) for name in names},
            "required": required, "additionalProperties": False}


# -- replies -> values ------------------------------------------------------------------------
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_STARTS = re.compile(r"""[\[{"]|(?<![\w.])(?:-?\d|true\b|false\b|null\b)""")


def parse_reply(text: str, schema: Any) -> Any:
    """The value in a model's ``text`` that matches ``schema``: the reply (or its first
    fenced block) as JSON (or a Python literal), a bare word when a string fits, else the
    first JSON value inside the text that matches; ``SchemaError`` with what was wrong."""
    first: list[str] | None = None
    for value in _candidates(str(text), schema):
        errors = validate(value, schema)
        if not errors:
            return value
        first = errors if first is None else first
    raise SchemaError(first or [f"the reply holds no JSON value ({describe(schema)} wanted)"])


def _candidates(text: str, schema: Any) -> Iterator[Any]:
    text = _THINK.sub("", text).strip()
    sources = [*[m.group(1).strip() for m in _FENCE.finditer(text)][:3], text]
    for body in sources:
        try:
            yield json.loads(body)
            continue
        except (ValueError, RecursionError):
            pass
        if body[:1] in "[{('\"":
            try:
                value = ast.literal_eval(body)
                yield list(value) if isinstance(value, tuple) else value
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass
    words = _words(schema)
    if words is not None:
        yield text
        bare = text.strip("`'\" \t\n").rstrip(".!").strip("`'\" ")
        yield bare
        if words:
            folded = [w for w in words if w.casefold() == bare.casefold()]
            if len(folded) == 1:
                yield folded[0]
    decoder = json.JSONDecoder()
    for tries, match in enumerate(_STARTS.finditer(text)):
        if tries >= _MAX_CANDIDATES:  # a huge text full of brackets is not scanned whole
            break
        try:
            yield decoder.raw_decode(text, match.start())[0]
        except (ValueError, RecursionError):
            continue
    if words and len(text) <= 300:  # a short sentence naming exactly one of the words
        named = {w for w in words if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.I)}
        if len(named) == 1:
            yield named.pop()


def _words(schema: Any, root: Any = None, depth: int = 0) -> list[str] | None:
    """``None`` when no string fits ``schema``; else the strings it enumerates (``[]``:
    any string)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return [] if schema is True else None
    if "$ref" in schema:
        return _words(resolve(schema["$ref"], root), root, depth + 1)
    listed = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if listed is not None:
        strings = [v for v in listed if isinstance(v, str)]
        return strings or None
    kinds = schema.get("type")
    if kinds is not None:
        return [] if "string" in ([kinds] if isinstance(kinds, str) else kinds) else None
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        found = [w for w in (_words(b, root, depth + 1) for b in branches) if w is not None]
        return None if not found else ([] if [] in found else [w for f in found for w in f])
    return []


# -- words for prompts ------------------------------------------------------------------------
_NOUNS = {"string": ("a string", "strings"), "integer": ("an integer", "integers"),
          "number": ("a number", "numbers"), "boolean": ("true or false", "booleans"),
          "null": ("null", "nulls"), "array": ("a JSON list", "lists"),
          "object": ("a JSON object", "objects")}


def describe(schema: Any) -> str:
    """A few words for a prompt: ``"a JSON list of strings"``, ``'one of: "a", "b"'``."""
    return _describe(schema, schema if isinstance(schema, dict) else {}, 0)


def _plain(schema: Any) -> str | None:
    """The bare type name of a schema with nothing else to say, else ``None``."""
    if isinstance(schema, dict) and set(schema) - ANNOTATIONS == {"type"} \
            and isinstance(schema["type"], str) and schema["type"] in _NOUNS:
        return schema["type"]
    return None


def _describe(schema: Any, root: dict[str, Any], depth: int) -> str:
    if schema is True or (isinstance(schema, dict) and not set(schema) - ANNOTATIONS):
        return "any JSON value"
    if not isinstance(schema, dict):
        return "nothing"
    if depth > 4:
        return "a JSON value"
    if "$ref" in schema:
        return _describe(resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return f"exactly {show(schema['const'])}"
    if "enum" in schema:
        return "one of: " + ", ".join(show(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_describe(s, root, depth + 1) for s in schema[key])
    kinds = schema.get("type", "")
    if isinstance(kinds, list):
        return " or ".join(_NOUNS[k][0] for k in kinds)
    if kinds == "array":
        return _describe_array(schema, root, depth)
    if kinds == "object" or "properties" in schema:
        return _describe_object(schema, root, depth)
    text = _NOUNS.get(kinds, ("a JSON value", ""))[0]
    limits = [f"{word} {schema[key]}" for key, word in (
        ("minimum", ">="), ("maximum", "<="), ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<")) if key in schema]
    if "pattern" in schema:
        limits.append(f"matching /{schema['pattern']}/")
    if "minLength" in schema or "maxLength" in schema:
        limits.append(f"of {schema.get('minLength', 0)} to {schema.get('maxLength', 'any')} "
                      "characters")
    return f"{text} ({', '.join(limits)})" if limits else text


def _describe_array(schema: dict[str, Any], root: dict[str, Any], depth: int) -> str:
    prefix = schema.get("prefixItems")
    if prefix is not None:
        parts = ", ".join(_describe(s, root, depth + 1) for s in prefix)
        return f"a JSON list of exactly {len(prefix)} items: {parts}" if \
            schema.get("maxItems") == len(prefix) else f"a JSON list starting with: {parts}"
    items, text = schema.get("items", True), "a JSON list"
    plain = _plain(items)
    if plain is not None:
        text += f" of {_NOUNS[plain][1]}"
    elif _describe(items, root, depth + 1) != "any JSON value":
        text += f", each item {_describe(items, root, depth + 1)}"
    if "minItems" in schema and schema.get("minItems") == schema.get("maxItems"):
        text += f" (exactly {schema['minItems']} items)"
    elif "minItems" in schema or "maxItems" in schema:
        text += f" ({schema.get('minItems', 0)} to {schema.get('maxItems', 'any')} items)"
    return text


def _describe_object(schema: dict[str, Any], root: dict[str, Any], depth: int) -> str:
    properties = schema.get("properties") or {}
    required = set(schema.get("required", ()))
    if properties:
        keys = []
        for name, sub in properties.items():
            about = _describe(sub, root, depth + 1)
            note = sub.get("description") if isinstance(sub, dict) else None
            if isinstance(note, str) and note:
                about += f": {note[:80]}"
            keys.append(f"{show(name)} ({about}{'' if name in required else ', optional'})")
        text = "a JSON object with keys " + ", ".join(keys)
        return text + (" and no others" if schema.get("additionalProperties") is False else "")
    extra = schema.get("additionalProperties", True)
    if extra is True:
        return "a JSON object"
    plain = _plain(extra)
    if plain is not None:
        return f"a JSON object mapping strings to {_NOUNS[plain][1]}"
    return f"a JSON object whose values are each {_describe(extra, root, depth + 1)}"


def format_instruction(schema: Any) -> str:
    """The line added to a typed sub-call's prompt (unless the prompt holds it already)."""
    return f"Answer format: reply with only {describe(schema)}, as JSON, and nothing else."


def repair_prompt(error: SchemaError, schema: Any) -> str:
    """The follow-up of a reply that did not match: what was wrong and what is wanted."""
    text = json.dumps(schema, ensure_ascii=False)
    if len(text) > _SCHEMA_IN_PROMPT:
        text = text[:_SCHEMA_IN_PROMPT] + " ..."
    return (f"Your reply does not match the required format: {error}.\n"
            f"Required: {describe(schema)}.\nJSON Schema: {text}\n"
            "Reply with only JSON matching the schema, and nothing else.")


def answer_problem(text: str, schema: Any) -> str | None:
    """Why a submitted final answer does not match ``schema`` (``None``: it does)."""
    try:
        parse_reply(text, schema)
    except SchemaError as exc:
        return (f"it does not match the required answer format ({exc}); the answer must be "
                f"{describe(schema)}: submit that value with FINAL(value)")
    return None


def answer_check(schema: Any) -> Callable[[str], str | None] | None:
    """``answer_problem`` for ``schema`` as a one-argument check (``None`` without one)."""
    return None if schema is None else lambda text: answer_problem(text, schema)


def output_of(text: str, schema: Any) -> tuple[Any, str | None]:
    """``(value, None)`` for a final answer that matches ``schema``, else ``(None, why)``;
    ``(None, None)`` without a schema."""
    if schema is None:
        return None, None
    try:
        return parse_reply(text, schema), None
    except SchemaError as exc:
        return None, f"the answer does not match the schema: {exc}"


# -- values -> the spec's Python form ---------------------------------------------------------
def build(value: Any, spec: Any) -> Any:
    """``value`` (parsed JSON that matches ``to_json_schema(spec)``) in the Python form of
    ``spec``: a tuple, a dataclass, an enum member, a float, ``spec.model_validate(value)``
    for a pydantic model; JSON as it is for a JSON Schema dict."""
    if spec is None or isinstance(spec, dict):
        return value
    validate_model: Callable[[Any], Any] | None = getattr(spec, "model_validate", None)
    if callable(validate_model):
        return validate_model(value)
    origin, args = typing.get_origin(spec), typing.get_args(spec)
    if origin is typing.Annotated:
        return build(value, args[0])
    if spec is float and is_kind(value, "number"):
        return float(value)
    if spec is int and isinstance(value, float):
        return int(value)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            if not validate(value, to_json_schema(arg)):
                return build(value, arg)
        return value
    if isinstance(value, list) and (spec is tuple or origin is tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(v, args[0]) for v in value)
        return tuple(build(v, a) for v, a in zip(value, args, strict=False)) if args \
            else tuple(value)
    if isinstance(value, list) and origin in (list, typing.List) and args:  # noqa: UP006
        return [build(v, args[0]) for v in value]
    if isinstance(value, dict) and origin in (dict, typing.Dict) and args:  # noqa: UP006
        return {k: build(v, args[1]) for k, v in value.items()}
    if isinstance(spec, type) and issubclass(spec, enum.Enum):
        return spec(value)
    if isinstance(spec, type) and isinstance(value, dict) and (
            typing.is_typeddict(spec) or dataclasses.is_dataclass(spec)):
        hints = _hints(spec)
        fields = {k: build(v, hints.get(k, Any)) for k, v in value.items()}
        return spec(**fields) if dataclasses.is_dataclass(spec) else fields
    return value


# -- many items per call ------------------------------------------------------------------------
def map_requests(instruction: str, items: list[Any], spec: Any, per_call: int
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    """The prompts and schemas of ``llm_map``: ``per_call`` numbered items per prompt, each
    answered by a JSON list of exactly that many values of ``spec``.  The prompts of one
    map share their start (the instruction), so a backend can reuse its cache."""
    if isinstance(per_call, bool) or not isinstance(per_call, int) or per_call < 1:
        raise ValueError(f"llm_map: per_call must be a positive int, got {per_call!r}")
    item = to_json_schema(str if spec is None else spec)
    prompts, shapes = [], []
    for start in range(0, len(items), per_call):
        chunk = items[start:start + per_call]
        numbered = "\n".join(f"{n}. {text}" for n, text in enumerate(chunk, 1))
        shape = {"type": "array", "items": item, "minItems": len(chunk),
                 "maxItems": len(chunk)}
        # The answer format comes before the items, so everything up to them is shared
        # by the map's prompts (a cached prefix: 15 new tokens a record, not 60).
        prompts.append(f"{instruction}\n\nAnswer for each of the {len(chunk)} items below, in "
                       f"order, with a JSON list of {len(chunk)} values.\n"
                       f"{format_instruction(shape)}\n\n{numbered}")
        shapes.append(shape)
    return prompts, shapes


def run_map(request: Callable[[dict[str, Any]], dict[str, Any]],
            failed: Callable[[dict[str, Any]], Any], instruction: str, items: list[Any],
            spec: Any, per_call: int, model: str | None) -> list[Any]:
    """``llm_map`` in the REPL: one batched request per chunk size (each with its own
    exact-length schema); ``failed(result)`` stands for each item of a failed call."""
    prompts, shapes = map_requests(instruction, [str(i) for i in items], spec, per_call)
    replies: list[dict[str, Any]] = [{}] * len(prompts)
    for size in sorted({shape["minItems"] for shape in shapes}):
        chosen = [i for i, shape in enumerate(shapes) if shape["minItems"] == size]
        reply = request({"op": "llm_query_batched", "prompts": [prompts[i] for i in chosen],
                         "model": model, "schema": shapes[chosen[0]]})
        for index, result in zip(chosen, reply["results"], strict=True):
            replies[index] = result
    values: list[Any] = []
    for shape, result in zip(shapes, replies, strict=True):
        if "error" in result:
            values.extend([failed(result)] * shape["minItems"])
        else:
            values.extend(build(v, str if spec is None else spec) for v in result["value"])
    return values
