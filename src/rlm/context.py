"""Turning what the caller passes as ``context`` into a REPL value and a short description."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlm.errors import ConfigError

__all__ = ["FolderContext", "describe_context", "load_context"]


class FolderContext(Mapping[str, str]):
    """A folder as a read-only mapping ``relative path -> file text``, read on access."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._names = sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()
        )

    def __getitem__(self, name: str) -> str:
        if name not in self._names:
            raise KeyError(name)
        return (self.root / name).read_text(encoding="utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"FolderContext({str(self.root)!r}, {len(self)} files)"


def load_context(value: Any) -> Any:
    """The REPL value for ``value``: paths become the file's text or a ``FolderContext``.

    Only ``pathlib.Path`` (any ``os.PathLike``) is read as a path; a plain ``str`` is data.
    ``bytes`` are decoded as UTF-8 when they are valid UTF-8 and kept as bytes otherwise.
    """
    try:
        if isinstance(value, os.PathLike):
            path = Path(value)
            if path.is_dir():
                return FolderContext(path)
            if not path.is_file():
                raise ConfigError(f"context path does not exist: {path}")
            data = path.read_bytes()
            return _decode(data)
        if isinstance(value, bytes | bytearray | memoryview):
            return _decode(bytes(value))
    except MemoryError as exc:
        size = Path(value).stat().st_size if isinstance(value, os.PathLike) else len(value)
        raise ConfigError(f"the context ({size:,} bytes) does not fit in this machine's "
                          "memory once decoded; pass a smaller input or a folder") from exc
    return value


def _decode(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _preview(text: str, size: int) -> str:
    if len(text) <= 2 * size:
        return text
    return f"{text[:size]}\n[... {len(text) - 2 * size} characters not shown ...]\n{text[-size:]}"


def describe_context(value: Any, *, preview_chars: int = 300) -> str:
    """A few lines telling the model what ``context`` is, without dumping it."""
    if value is None:
        return "`context` is None: there is no separate input."
    kind = type(value).__name__
    if isinstance(value, str | bytes):
        lines = value.count(b"\n" if isinstance(value, bytes) else "\n") + 1
        head = _preview(value if isinstance(value, str) else repr(value[:2 * preview_chars]),
                        preview_chars // 2)
        return (f"`context` is a {kind} of {len(value):,} characters ({lines:,} lines). "
                f"Start and end:\n<<<\n{head}\n>>>")
    if isinstance(value, Mapping):
        keys = list(value.keys())
        shown = ", ".join(repr(k) for k in keys[:10]) + (", ..." if len(keys) > 10 else "")
        return f"`context` is a {kind} with {len(keys):,} keys: {shown}"
    if isinstance(value, list | tuple):
        sizes = [len(x) if hasattr(x, "__len__") else 1 for x in value[:5]]
        first = repr(value[0])[:preview_chars] if value else ""
        return (f"`context` is a {kind} of {len(value):,} items (sizes of the first: {sizes}). "
                f"First item: {first}")
    return f"`context` is a {kind}: {repr(value)[:preview_chars]}"
