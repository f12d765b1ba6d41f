"""Bounded previews of large strings for trace events.

A trace keeps what a run did, not every byte it moved: a string field longer than
``PREVIEW_CHARS`` is stored as its head and tail around a marker, next to
``<field>_chars`` (the full length) and ``<field>_sha256`` (of its UTF-8 bytes), so a
value can still be recognised and compared without being stored.  Shorter strings are
stored as they are, with no extra field.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["PREVIEW_CHARS", "head_and_tail", "preview", "preview_fields", "sha256_text"]

#: The longest string an event field keeps whole.
PREVIEW_CHARS = 100_000
_HASH_PIECE = 1 << 20


def head_and_tail(text: str, limit: int, label: str, fate: str) -> str:
    """``text`` itself, or when longer than ``limit`` its head and tail around a marker
    ``[label: N of M characters fate]``."""
    if len(text) <= limit:
        return text
    half = max(1, limit // 2)
    return (f"{text[:half]}\n... [{label}: {len(text) - 2 * half:,} of {len(text):,} "
            f"characters {fate}] ...\n{text[-half:]}")


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """``text`` itself, or its head and tail around a marker when longer than ``limit``."""
    return head_and_tail(text, limit, "trace preview", "not stored")


def sha256_text(text: str) -> str:
    """The SHA-256 of ``text`` as UTF-8, hashed piece by piece (no full-size copy)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), _HASH_PIECE):
        digest.update(text[start:start + _HASH_PIECE].encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def preview_fields(limit: int = PREVIEW_CHARS, **fields: Any) -> dict[str, Any]:
    """The event fields for ``fields``: each long string becomes ``preview(value)`` plus
    ``<name>_chars`` and ``<name>_sha256``; anything else is kept as it is."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > limit:
            out[name] = preview(value, limit)
            out[f"{name}_chars"] = len(value)
            out[f"{name}_sha256"] = sha256_text(value)
        else:
            out[name] = value
    return out
