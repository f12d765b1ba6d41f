"""JSON Schema, the subset that typed answers use: checking a schema and validating a value.

Standard library only: shipped into sandboxes next to ``schema.py``, which builds on it.
``check(schema)`` raises ``TypeError`` for a keyword outside ``SUPPORTED`` (annotations such
as ``title`` are kept and ignored) or a keyword of the wrong form; ``validate(value, schema)``
lists what is wrong with a value, each message starting with the value's path.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["ANNOTATIONS", "JSON_TYPES", "SUPPORTED", "check", "is_kind", "resolve", "same",
           "show", "validate"]

JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
#: The validation keywords ``validate`` applies.
SUPPORTED = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "minItems", "maxItems", "uniqueItems", "anyOf", "oneOf", "allOf", "$ref",
    "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "pattern", "minProperties", "maxProperties"})
#: Keywords that describe without constraining: kept, never checked.
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "$schema",
                         "$id", "$comment", "discriminator", "readOnly", "writeOnly",
                         "deprecated"})
_MAX_ERRORS = 10

_SUBSCHEMAS = {"properties": "map", "$defs": "map", "definitions": "map",
               "additionalProperties": "one", "items": "one", "prefixItems": "list",
               "anyOf": "list", "oneOf": "list", "allOf": "list"}
_COUNTS = {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}


def check(schema: Any, path: str = "$", root: dict[str, Any] | None = None) -> None:
    """``TypeError`` for anything in ``schema`` that ``validate`` would not honour."""
    root = schema if root is None else root
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise TypeError(f"schema {path}: a schema is an object (or true/false), not "
                        f"{type(schema).__name__}")
    for key, value in schema.items():
        where, problem = f"{path}.{key}", None
        if key in ANNOTATIONS:
            continue
        if key not in SUPPORTED:
            problem = (f"the keyword {key!r} is not supported (supported: "
                       f"{', '.join(sorted(SUPPORTED))})")
        elif key in _SUBSCHEMAS:
            form = _SUBSCHEMAS[key]
            subs = value if form == "list" else value.items() if form == "map" else [value]
            if not isinstance(value, {"map": dict, "list": list, "one": bool | dict}[form]) \
                    or (form == "list" and key != "prefixItems" and not value):
                problem = f"must be {'a list of schemas' if form == 'list' else 'a schema'}"
            else:
                for index, sub in enumerate(subs):
                    name, sub = sub if form == "map" else (index, sub)
                    check(sub, where if form == "one" else f"{where}[{name!r}]", root)
        elif key == "type":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or \
                    any(name not in JSON_TYPES for name in names):
                problem = f"{value!r} is not a JSON type ({', '.join(JSON_TYPES)}) or a list"
        elif key == "enum" and not (isinstance(value, list) and value):
            problem = "must be a non-empty list"
        elif key == "required" and not (isinstance(value, list)
                                        and all(isinstance(v, str) for v in value)):
            problem = "must be a list of property names"
        elif key in _COUNTS and (isinstance(value, bool) or not isinstance(value, int)
                                 or value < 0):
            problem = "must be a whole number >= 0"
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                     "multipleOf") and not (is_kind(value, "number")
                                            and (key != "multipleOf" or value > 0)):
            problem = "must be a number"
        elif key == "uniqueItems" and not isinstance(value, bool):
            problem = "must be true or false"
        elif key == "pattern":
            try:
                re.compile(value)
            except (TypeError, re.error) as exc:
                problem = f"not a regular expression: {exc}"
        elif key == "$ref":
            resolve(value, root, where)
        if problem is not None:
            raise TypeError(f"schema {where}: {problem}")


def resolve(ref: Any, root: dict[str, Any], where: str = "$ref") -> Any:
    """The schema a local ``$ref`` (``#``, ``#/$defs/Name``) points to."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise TypeError(f"schema {where}: only local references (#/...) are supported, "
                        f"not {ref!r}")
    target: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            raise TypeError(f"schema {where}: {ref!r} points to nothing")
        target = target[part]
    return target


# -- validation -------------------------------------------------------------------------------
def is_kind(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"null": type(None), "boolean": bool, "string": str,
                              "array": list | tuple, "object": dict}[kind])


def _kind(value: Any) -> str:
    return next((k for k in ("null", "boolean", "integer", "number", "string", "array",
                             "object") if is_kind(value, k)), type(value).__name__)


def show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if is_kind(a, "number") and is_kind(b, "number"):
        return bool(a == b)
    return type(a) is type(b) and a == b


def validate(value: Any, schema: Any) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (``[]``: it matches); each message
    starts with the value's path (``$``, ``$.key``, ``$[2]``)."""
    errors: list[str] = []
    _errors(value, schema, schema if isinstance(schema, dict) else {}, "$", errors, 0)
    if len(errors) > _MAX_ERRORS:
        errors[_MAX_ERRORS:] = [f"... and {len(errors) - _MAX_ERRORS} more"]
    return errors


def _errors(value: Any, schema: Any, root: dict[str, Any], path: str, out: list[str],
            depth: int) -> None:
    if schema is True or schema is None:
        return
    if schema is False:
        out.append(f"{path}: no value is allowed here")
        return
    if depth > 100:
        out.append(f"{path}: the schema nests too deep")
        return
    if "$ref" in schema:
        _errors(value, resolve(schema["$ref"], root), root, path, out, depth + 1)
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else kinds
        if not any(is_kind(value, name) for name in names):
            out.append(f"{path}: expected {' or '.join(names)}, got {_kind(value)} "
                       f"{show(value)}")
            return
    if "enum" in schema and not any(same(value, v) for v in schema["enum"]):
        out.append(f"{path}: {show(value)} is not one of "
                   f"{', '.join(show(v) for v in schema['enum'])}")
    if "const" in schema and not same(value, schema["const"]):
        out.append(f"{path}: expected {show(schema['const'])}, got {show(value)}")
    if is_kind(value, "number"):
        _number_errors(value, schema, path, out)
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{path}: shorter than {schema['minLength']} characters")
        if len(value) > schema.get("maxLength", math.inf):
            out.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            out.append(f"{path}: {show(value)} does not match /{schema['pattern']}/")
    elif isinstance(value, list | tuple):
        _array_errors(value, schema, root, path, out, depth)
    elif isinstance(value, dict):
        _object_errors(value, schema, root, path, out, depth)
    for sub in schema.get("allOf", ()):
        _errors(value, sub, root, path, out, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key not in schema:
            continue
        branches = []
        for sub in schema[key]:
            found: list[str] = []
            _errors(value, sub, root, path, found, depth + 1)
            branches.append(found)
        matched = sum(1 for found in branches if not found)
        if matched == 0:
            why = "; ".join(found[0] for found in branches)
            out.append(f"{path}: matches none of the allowed forms ({why})")
        elif key == "oneOf" and matched > 1:
            out.append(f"{path}: matches {matched} of the forms, exactly one is allowed")


def _number_errors(value: Any, schema: dict[str, Any], path: str, out: list[str]) -> None:
    for key, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                     ("exclusiveMinimum", lambda v, b: v <= b),
                     ("exclusiveMaximum", lambda v, b: v >= b)):
        if key in schema and bad(value, schema[key]):
            out.append(f"{path}: {show(value)} breaks {key} {schema[key]}")
    step = schema.get("multipleOf")
    if step is not None and not math.isclose(value / step, round(value / step)):
        out.append(f"{path}: {show(value)} is not a multiple of {step}")


def _array_errors(value: list[Any] | tuple[Any, ...], schema: dict[str, Any],
                  root: dict[str, Any], path: str, out: list[str], depth: int) -> None:
    if len(value) < schema.get("minItems", 0):
        out.append(f"{path}: {len(value)} items, fewer than {schema['minItems']}")
    if len(value) > schema.get("maxItems", math.inf):
        out.append(f"{path}: {len(value)} items, more than {schema['maxItems']}")
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else schema.get("items", True)
        _errors(item, sub, root, f"{path}[{index}]", out, depth + 1)
    if schema.get("uniqueItems") and any(same(a, b) for i, a in enumerate(value)
                                         for b in value[i + 1:]):
        out.append(f"{path}: the items are not unique")


def _object_errors(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any],
                   path: str, out: list[str], depth: int) -> None:
    missing = [name for name in schema.get("required", ()) if name not in value]
    if missing:
        out.append(f"{path}: missing {', '.join(map(show, missing))}")
    if len(value) < schema.get("minProperties", 0):
        out.append(f"{path}: fewer than {schema['minProperties']} keys")
    if len(value) > schema.get("maxProperties", math.inf):
        out.append(f"{path}: more than {schema['maxProperties']} keys")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            _errors(item, properties[key], root, f"{path}.{key}", out, depth + 1)
        elif extra is False:
            out.append(f"{path}: unexpected key {show(key)}")
        else:
            _errors(item, extra, root, f"{path}.{key}", out, depth + 1)
