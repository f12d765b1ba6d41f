"""Where trace events go: nowhere, memory, a JSONL file, or several of these."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from rlm.trace.events import TraceEvent

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


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every occurrence of a secret in strings nested inside ``value``."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "[REDACTED]")
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


class JsonlSink:
    """Appends one JSON object per event to a file, flushed per line, behind a lock.

    The file grows by exactly one line per event (history is never rewritten).
    ``secrets`` (API keys) are replaced by ``[REDACTED]`` wherever they would appear.
    """

    def __init__(self, path: str | Path, *, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def emit(self, event: TraceEvent) -> None:
        line = json.dumps(redact(event.to_dict(), self._secrets), default=str,
                          ensure_ascii=False)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


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
