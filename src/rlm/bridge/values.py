"""How a value crosses between the host and a REPL: the one encoder and decoder.

A variable the host sets (``set_variable``) never travels as a code literal: it crosses as
bytes in one of ``VALUE_FORMATS``, by file to a runner or a kernel, as the body of ``POST
/set_var`` to the HTTP broker.  ``text`` is a str as UTF-8, lone surrogates kept
(``surrogatepass``); ``bytes`` any bytes-like value as it is; ``json`` anything else JSON
can hold, any ``Mapping`` (a folder's ``FolderContext``...) as an object.  Values are made
and read a piece at a time (``EncodedValue.pieces``, ``receive``), so that a 2 GB string is
never encoded whole.  Standard library only: shipped next to ``runner.py`` and
``broker.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["PIECE", "VALUE_FORMATS", "EncodedValue", "decode_value", "encode_value", "receive"]

VALUE_FORMATS = ("text", "bytes", "json")
#: Characters (text) or bytes per piece of an encoded value.
PIECE = 1 << 22


class EncodedValue:
    """A value as the bytes that carry it, in ``format``: ``pieces()`` makes them one piece
    at a time; ``size`` is their total length."""

    __slots__ = ("_data", "format")

    def __init__(self, format: str, data: str | memoryview) -> None:
        self.format = format
        self._data = data

    @property
    def size(self) -> int:
        data = self._data
        if isinstance(data, memoryview):
            return data.nbytes
        return len(data) if data.isascii() else sum(len(piece) for piece in self.pieces())

    def pieces(self) -> Iterator[bytes]:
        data = self._data
        if isinstance(data, memoryview):
            for start in range(0, data.nbytes, PIECE):
                yield bytes(data[start:start + PIECE])
        else:
            for start in range(0, len(data), PIECE):
                yield data[start:start + PIECE].encode("utf-8", "surrogatepass")


def _as_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_value(value: Any) -> EncodedValue:
    """``value`` as text (a str), bytes (anything bytes-like) or JSON (anything else);
    ``TypeError``, ``ValueError`` or ``RecursionError`` for a value JSON cannot hold (a
    set, a cycle...)."""
    if isinstance(value, str):
        return EncodedValue("text", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return EncodedValue("bytes", memoryview(value).cast("B"))
    return EncodedValue("json", json.dumps(value, ensure_ascii=False, default=_as_json))


def decode_value(format: str, data: bytes | bytearray | memoryview) -> Any:
    """The value ``encode_value`` made; ``ValueError`` for an unknown format or bytes that
    are not what the format says (``UnicodeDecodeError``, ``JSONDecodeError``)."""
    if format == "bytes":
        return data if isinstance(data, bytes) else bytes(data)
    if format not in VALUE_FORMATS:
        raise ValueError(f"unknown value format {format!r}: want one of "
                         f"{', '.join(VALUE_FORMATS)}")
    text = str(data, "utf-8", "surrogatepass")
    return text if format == "text" else json.loads(text)


def receive(readinto: Callable[[memoryview], int | None], size: int) -> bytearray:
    """``size`` bytes read into one buffer, a piece at a time (a stream's ``readinto``);
    ``EOFError`` saying how much came when the stream ends first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    try:
        while done < size:
            got = readinto(view[done:done + PIECE])
            if not got:
                raise EOFError(f"the body ended after {done} of {size} bytes")
            done += got
    finally:
        view.release()
    return buffer
