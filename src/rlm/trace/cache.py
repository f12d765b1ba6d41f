"""A content-addressed cache of LM calls: ``RLM(cache=PATH | LMCache)``.

A call is keyed by what makes its reply: the backend's name and model, the request's model,
messages, ``response_schema``, ``temperature``, ``max_output_tokens``, ``stop`` and
``grammar`` (never its depth, time limit or conversation name), hashed with SHA-256, plus
how many identical calls the same run made before it.  That count keeps sampling honest: a
run that asks one prompt five times (to vote) gets five replies the first time and the
same five, in turn, the next time, never one reply five times.

By default only sub-calls are cached (``llm_query`` and its batched and typed forms, their
repairs, ``rlm_query`` at the last level, extracts); ``turns=True`` caches a node's own
turns too, so a repeated run replays whole.  A hit costs nothing: the LM handler serves it
without reserving room, charges it under the usage key ``cache:<model>`` (0 tokens, $0) and
traces it as an ``lm_call`` with ``cached: true`` and what it saved.  Failed calls, and
replies that a budget's cap on the reply length may have cut short, are not stored.

``SQLiteCache`` (stdlib ``sqlite3``, WAL journal) is safe under threads and processes;
``MemoryCache`` lives as long as its object.  ``open_cache`` turns ``RLM(cache=...)`` into
one: a directory (an existing one, or a path with no suffix) holds ``lm-cache.sqlite3``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlm.errors import ConfigError
from rlm.types import Completion, CompletionRequest

__all__ = ["CACHE_FILE", "CachedReply", "LMCache", "MemoryCache", "RunCache", "SQLiteCache",
           "open_cache", "request_key", "saved_fields"]

#: The file a cache directory holds.
CACHE_FILE = "lm-cache.sqlite3"
#: Bumped when what a key covers changes, so old entries are never served for new keys.
_KEY_VERSION = "rlm-lm-cache-1"


@dataclass(frozen=True)
class CachedReply:
    """A stored reply and what the call that made it cost."""

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cached_input_tokens: int = 0

    @classmethod
    def of(cls, completion: Completion) -> CachedReply:
        return cls(completion.text, completion.model, completion.input_tokens,
                   completion.output_tokens, completion.cost_usd,
                   completion.cached_input_tokens)


class LMCache(ABC):
    """Where replies are kept: ``get(key)`` and ``put(key, reply)``, thread-safe.

    ``turns``: cache a node's own turns too, not only sub-calls.  ``hits``, ``misses`` and
    ``stores`` count what the runs using this object did with it.
    """

    def __init__(self, *, turns: bool = False) -> None:
        self.turns = turns
        self.hits = self.misses = self.stores = 0
        self._count_lock = threading.Lock()

    @abstractmethod
    def get(self, key: str) -> CachedReply | None:
        """The reply stored under ``key``, if any."""

    @abstractmethod
    def put(self, key: str, reply: CachedReply) -> None:
        """Store ``reply`` under ``key`` (replacing what was there)."""

    def close(self) -> None:
        """Release what the cache holds open (nothing by default)."""
        return None

    def count(self, what: str) -> None:
        with self._count_lock:
            setattr(self, what, getattr(self, what) + 1)

    def __enter__(self) -> LMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryCache(LMCache):
    """Replies in a dict: shared by every run that is given this object."""

    def __init__(self, *, turns: bool = False) -> None:
        super().__init__(turns=turns)
        self._entries: dict[str, CachedReply] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, reply: CachedReply) -> None:
        with self._lock:
            self._entries[key] = reply

    def __len__(self) -> int:
        return len(self._entries)


class SQLiteCache(LMCache):
    """Replies in one SQLite file (created with its folder), shared across processes."""

    def __init__(self, path: str | os.PathLike[str], *, turns: bool = False) -> None:
        super().__init__(turns=turns)
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, "
                             "reply TEXT NOT NULL, created REAL NOT NULL)")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the LM cache {self.path}: {exc}") from exc

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?",
                                   (key,)).fetchone()
        return None if row is None else CachedReply(**json.loads(row[0]))

    def put(self, key: str, reply: CachedReply) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)",
                             (key, json.dumps(asdict(reply), ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_cache(spec: str | os.PathLike[str] | LMCache | None) -> LMCache | None:
    """The cache ``RLM(cache=spec)`` names: ``None``, an ``LMCache``, a SQLite file, or a
    directory (an existing one or a path with no suffix) that holds ``CACHE_FILE``."""
    if spec is None or isinstance(spec, LMCache):
        return spec
    if not isinstance(spec, str | os.PathLike):
        raise ConfigError(f"cache must be a path or an LMCache, not {type(spec).__name__}")
    path = Path(spec).expanduser()
    if path.is_dir() or not path.suffix:
        path = path / CACHE_FILE
    return SQLiteCache(path)


def request_key(backend_name: str, model_name: str, request: CompletionRequest,
                occurrence: int = 0) -> str:
    """The key of ``request`` to ``backend_name``/``model_name``, the ``occurrence``-th
    identical one of its run (from 0)."""
    fields = {"v": _KEY_VERSION, "backend": backend_name, "model": model_name,
              "request_model": request.model, "messages": request.messages,
              "schema": request.response_schema, "temperature": request.temperature,
              "max_output_tokens": request.max_output_tokens, "stop": request.stop,
              "grammar": request.grammar, "n": occurrence}
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class RunCache:
    """One run's view of an ``LMCache``: claims each call's key (counting identical calls)
    and decides what is stored.  Shared by every node of the run, thread-safe."""

    def __init__(self, cache: LMCache) -> None:
        self.cache = cache
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def key(self, backend_name: str, model_name: str, request: CompletionRequest,
            purpose: str) -> str | None:
        """The key this call is looked up and stored under; ``None``: not cached."""
        if purpose == "turn" and not self.cache.turns:
            return None
        base = request_key(backend_name, model_name, request)
        with self._lock:
            occurrence = self._seen[base]
            self._seen[base] += 1
        return base if occurrence == 0 else request_key(backend_name, model_name, request,
                                                        occurrence)

    def get(self, key: str) -> CachedReply | None:
        reply = self.cache.get(key)
        self.cache.count("misses" if reply is None else "hits")
        return reply

    def put(self, key: str, asked: CompletionRequest, sent: CompletionRequest,
            completion: Completion) -> None:
        """Store the reply to ``sent`` (``asked`` after the budget priced it), unless the
        budget's cap on its length may have cut it short."""
        cap = sent.max_output_tokens
        if cap != asked.max_output_tokens and cap is not None \
                and completion.output_tokens >= cap:
            return
        self.cache.put(key, CachedReply.of(completion))
        self.cache.count("stores")


def saved_fields(reply: CachedReply) -> dict[str, Any]:
    """The ``lm_call`` fields of a hit: what the call it stands for cost."""
    return {"cached": True, "saved_input_tokens": reply.input_tokens,
            "saved_output_tokens": reply.output_tokens, "saved_cost_usd": reply.cost_usd}
