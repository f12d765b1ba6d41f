"""What a trace reader accepts: the version rule and the shape of every known event.

A line is checked against the version it says it was written in (``schema_version``,
``"MAJOR.MINOR"``; a line without one predates versioning and is read as ``1.0``, whose
fields it has).  Known fields must have their types, whatever the version.  Unknown
top-level fields and unknown event types are refused in a file of this rlm's minor
version or older, and kept as they are in a newer minor one (a newer minor version only
adds).  A newer major version is refused with a message saying to upgrade.
"""

from __future__ import annotations

import re
from typing import Any

from rlm.errors import RLMError
from rlm.trace.events import EVENT_TYPES, SCHEMA_VERSION

__all__ = ["COMMON_FIELDS", "REQUIRED_DATA", "check_event", "parse_version"]

_NUMBER = (int, float)
#: The fields of every event and their types (``None``: the field may be null).
COMMON_FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (str,),
    "type": (str,),
    "run_id": (str,),
    "parent_run_id": (str, type(None)),
    "depth": (int,),
    "iteration": (int,),
    "seq": (int,),
    "ts": _NUMBER,
    "data": (dict,),
}
#: The ``data`` fields each event type always has, and their types.
REQUIRED_DATA: dict[str, dict[str, tuple[type, ...]]] = {
    "run_start": {"context_type": (str,), "limits": (dict,)},
    "lm_call": {"purpose": (str,), "model": (str,), "latency_s": _NUMBER},
    "code_exec": {"code": (str,)},
    "subcall_start": {"op": (str,), "count": (int,)},
    "subcall_end": {"op": (str,), "count": (int,), "failed": (int,), "elapsed_s": _NUMBER},
    "note": {"kind": (str,)},
    "final": {"response": (str,), "stop_reason": (str,)},
    "run_end": {"elapsed_s": _NUMBER},
}
#: Optional ``data`` fields whose type is checked when present.
_OPTIONAL_DATA: dict[str, dict[str, tuple[type, ...]]] = {
    "lm_call": {"input_tokens": (int,), "output_tokens": (int,),
                "cost_usd": (*_NUMBER, type(None)), "error": (dict,)},
    "code_exec": {"stdout": (str,), "stderr": (str,), "error": (str, type(None)),
                  "final": (dict, type(None))},
    "final": {"evidence": (list,)},
    "run_end": {"iterations": (int,), "error": (dict,)},
}
_VERSION = re.compile(r"^(\d+)\.(\d+)$")
_MAJOR, _MINOR = (int(part) for part in SCHEMA_VERSION.split("."))


def parse_version(text: Any) -> tuple[int, int]:
    """``(major, minor)`` of a ``"MAJOR.MINOR"`` version; ``ValueError`` otherwise."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"schema_version must be 'MAJOR.MINOR', got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a count
        return bool in types
    return isinstance(value, types)


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_event(raw: Any, where: str) -> None:
    """Raise ``RLMError`` (naming ``where``, e.g. ``"run.jsonl:3"``) unless ``raw`` is an
    event this rlm can read; see the module docstring for the rules."""
    if not isinstance(raw, dict):
        raise RLMError(f"{where}: not a trace event (a JSON object is expected)")
    try:
        major, minor = parse_version(raw.get("schema_version", "1.0"))
    except ValueError as exc:
        raise RLMError(f"{where}: {exc}") from None
    if major > _MAJOR:
        raise RLMError(f"{where}: this trace is schema version {major}.{minor}, newer than "
                       f"this rlm reads ({_MAJOR}.x); upgrade rlm to read it")
    if major < 1:
        raise RLMError(f"{where}: unknown trace schema version {major}.{minor}")
    newer = minor > _MINOR
    for name, types in COMMON_FIELDS.items():
        if name not in raw:
            if name == "schema_version":
                continue
            raise RLMError(f"{where}: not a trace event (no {name!r})")
        if not _type_ok(raw[name], types):
            raise RLMError(f"{where}: {name!r} must be {_names(types)}, got {raw[name]!r:.60}")
    extra = sorted(set(raw) - set(COMMON_FIELDS))
    if extra and not newer:
        raise RLMError(f"{where}: unknown field {extra[0]!r} in a schema {major}.{minor} "
                       "event")
    kind, data = raw["type"], raw["data"]
    if kind not in EVENT_TYPES:
        if newer:
            return
        raise RLMError(f"{where}: unknown event type {kind!r} in a schema {major}.{minor} "
                       "trace")
    if "trace_error" in data:  # the writer could not serialise this event: kept as is
        return
    for name, types in REQUIRED_DATA[kind].items():
        if name not in data:
            raise RLMError(f"{where}: a {kind} event needs data.{name}")
        if not _type_ok(data[name], types):
            raise RLMError(f"{where}: {kind} data.{name} must be {_names(types)}, "
                           f"got {data[name]!r:.60}")
    for name, types in _OPTIONAL_DATA.get(kind, {}).items():
        if name in data and not _type_ok(data[name], types):
            raise RLMError(f"{where}: {kind} data.{name} must be {_names(types)}, "
                           f"got {data[name]!r:.60}")
