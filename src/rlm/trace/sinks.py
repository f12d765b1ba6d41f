"""Where trace events go: nowhere, memory, a JSONL file, or several of these."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from rlm.trace.events import TraceEvent

_log = logging.getLogger(__name__)

__all__ = ["JsonlSink", "MemorySink", "MultiSink", "NullSink", "TraceSink", "redact"]


@runtime_checkable
class TraceSink(Protocol):
    """Receives events as they happen.  ``emit`` must be thread-safe and must not raise."""

    def emit(self, event: TraceEvent) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Drops every event."""

    def emit(self, event: TraceEvent) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps events in a list (``events``); used for ``RLMResult.trace`` and in tests."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: TraceEvent) -> None:
        with self._lock:
            self.events.append(event)

    def close(self) -> None:
        pass


#: Alphanumeric characters a secret needs before transformed copies of it are matched too.
_FUZZY_MIN_CHARS = 8
#: A run of this many consecutive characters of a secret is redacted wherever it appears.
_FRAGMENT_CHARS = 10
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class _Pattern:
    """A secret reduced to its letters and digits, lower-cased (``core``), and its probes."""

    core: str
    window: int  # the shortest run of the core that is redacted
    chunks: tuple[str, ...]  # every run of ``window`` characters contains one of these


@lru_cache(maxsize=64)
def _patterns(secrets: tuple[str, ...]) -> tuple[_Pattern, ...]:
    patterns = []
    for secret in secrets:
        core = _NOT_ALNUM.sub("", secret).lower()
        if len(core) < _FUZZY_MIN_CHARS:
            continue  # too short to match loosely without redacting ordinary text
        window = min(len(core), _FRAGMENT_CHARS)
        size = window // 2
        chunks = {core[i:i + size] for i in range(0, len(core) - size + 1, size)}
        patterns.append(_Pattern(core, window, tuple(sorted(chunks | {core[-size:]}))))
    return tuple(patterns)


def _fuzzy_spans(text: str, patterns: tuple[_Pattern, ...]) -> list[tuple[int, int]]:
    """Where ``text`` holds a run of ``window`` characters of a secret, ignoring case and
    anything that is not a letter or digit between them (spaces, dashes, line breaks)."""
    folded = _NOT_ALNUM.sub("", text).lower()
    live = [p for p in patterns if any(chunk in folded for chunk in p.chunks)]
    if not live:
        return []  # the fast path: no probe of any secret is in the text
    where = [m.start() + i for m in _ALNUM.finditer(text) for i in range(len(m.group()))]
    spans: set[tuple[int, int]] = set()
    for pattern in live:
        core, size = pattern.core, len(pattern.chunks[0])
        for chunk in pattern.chunks:
            at = folded.find(chunk)
            while at != -1:
                offset = core.find(chunk)
                while offset != -1:  # extend the match along this alignment both ways
                    a, b, e, f = at, offset, at + size, offset + size
                    while a > 0 and b > 0 and folded[a - 1] == core[b - 1]:
                        a, b = a - 1, b - 1
                    while e < len(folded) and f < len(core) and folded[e] == core[f]:
                        e, f = e + 1, f + 1
                    if e - a >= pattern.window:
                        spans.add((where[a], where[e - 1] + 1))
                    offset = core.find(chunk, offset + 1)
                at = folded.find(chunk, at + 1)
    return sorted(spans)


def _redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[REDACTED]")
    spans = _fuzzy_spans(text, _patterns(secrets))
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, stop in spans:  # sorted: merge the ones that overlap or touch
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    parts, end = [], 0
    for start, stop in merged:
        parts += [text[end:start], "[REDACTED]"]
        end = stop
    parts.append(text[end:])
    return "".join(parts)


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every occurrence of a secret in strings nested inside ``value``.

    A server may echo a key transformed, so besides exact copies this redacts, for secrets
    of at least 8 letters and digits, any run of 10 consecutive characters of the secret
    (all of it when shorter) whatever the case and whatever non-alphanumeric characters
    (spaces, dashes, line breaks) were put between them: lower- or upper-cased, spaced out
    or split keys are redacted too.  Dictionary keys are redacted like values.
    """
    secrets = tuple(s for s in secrets if isinstance(s, str) and s)
    if not secrets:
        return value
    return _redact(value, secrets)


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, secrets)
    if isinstance(value, dict):
        return {_redact(k, secrets) if isinstance(k, str) else k: _redact(v, secrets)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secrets) for v in value]
    return value


def _escape_surrogates(line: str) -> str:
    """Write lone surrogates (``"\\ud800"``, from ``print`` of bad text) as JSON escapes,
    which UTF-8 cannot encode; ``json.loads`` reads them back as the same string."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class JsonlSink:
    """Appends one JSON object per event to a file, flushed per line, behind a lock.

    The file grows by exactly one line per event (history is never rewritten).
    ``secrets`` (API keys) are replaced by ``[REDACTED]`` wherever they would appear (see
    ``redact``).  Text UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``, which
    ``print`` of bad bytes can produce) is written as a JSON ``\\uXXXX`` escape, and an
    event that cannot be serialised becomes a line saying so: ``emit`` never raises.
    """

    def __init__(self, path: str | Path, *, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets = [s for s in secrets if isinstance(s, str) and s]
        self._lock = threading.Lock()
        # backslashreplace: a line that still cannot be encoded is written escaped, not lost
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8",
                                                    errors="backslashreplace")

    def emit(self, event: TraceEvent) -> None:
        try:
            line = json.dumps(redact(event.to_dict(), self._secrets), default=str,
                              ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as exc:  # emit must not raise
            line = json.dumps({**_header(event), "data": {
                "trace_error": f"event not serialisable: {type(exc).__name__}: {exc}"[:300]}})
        line = _escape_surrogates(line)
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(line + "\n")
                    self._file.flush()
                except OSError as exc:  # a full disk must not end the run: stop writing
                    self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        """Stop writing after a write failed (the run goes on; its trace stays in memory)."""
        _log.warning("trace file %s: %s; no more events are written to it", self.path, exc)
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            if file is not None:
                file.close()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:
                    _log.warning("trace file %s: %s", self.path, exc)
                self._file = None


def _header(event: TraceEvent) -> dict[str, Any]:
    return {k: v for k, v in event.to_dict().items() if k != "data"}


class MultiSink:
    """Sends each event to several sinks."""

    def __init__(self, *sinks: TraceSink) -> None:
        self.sinks = [s for s in sinks if not isinstance(s, NullSink)]

    def emit(self, event: TraceEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
