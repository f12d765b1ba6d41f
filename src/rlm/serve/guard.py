"""What a server refuses: a wrong bearer token, a run past the concurrency limit, spending
past the daily cap, per-request limits past the profile's, a path outside the data
directory, and binding to a non-loopback address without an API key."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlm.core.limits import Limits
from rlm.errors import ConfigError, RLMError
from rlm.serve.profiles import LIMIT_NAMES

__all__ = ["BearerGate", "Refused", "SpendLedger", "check_bind", "check_token", "data_path",
           "is_loopback", "merge_limits", "run_refusal"]

_log = logging.getLogger(__name__)


@dataclass
class Refused(Exception):
    """A request the server will not run: ``status`` is the HTTP status, ``kind`` the
    OpenAI error type, ``retry_after_s`` the ``Retry-After`` (429 only)."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return self.message


def run_refusal(exc: RLMError) -> Refused:
    """How a run that raised is answered: 400 for a configuration error (a request's
    options the engine refused), 502 for a failure of the backend or the environment."""
    if isinstance(exc, ConfigError):
        return Refused(400, str(exc), code="invalid_request")
    return Refused(502, f"{type(exc).__name__}: {exc}", kind="backend_error",
                   code=type(exc).__name__)


# -- binding and auth ------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse (``ConfigError``) to serve beyond loopback without an API key."""
    if not is_loopback(host) and not api_key:
        raise ConfigError(f"refusing to bind {host}: a server reachable from other machines "
                          "needs --api-key (or RLM_SERVE_API_KEY); without one, bind 127.0.0.1")


def check_token(authorization: str | None, api_key: str | None) -> bool:
    """Whether the ``Authorization`` header carries ``Bearer <api_key>`` (constant time);
    always true when the server has no key."""
    if not api_key:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(given, api_key.encode())


class BearerGate:
    """Pure ASGI middleware: HTTP requests without ``Bearer <api_key>`` get 401 (used in
    front of the MCP SDK's app); other scopes (lifespan) pass through."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and self.api_key:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
            if not check_token(headers.get("authorization"), self.api_key):
                body = json.dumps({"error": {"message": "missing or wrong API key",
                                             "type": "authentication_error"}}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# -- limits -----------------------------------------------------------------------------------
def merge_limits(cap: Limits, requested: Any) -> Limits:
    """The limits of one request: each value asked for in ``requested`` (a mapping of
    ``LIMIT_NAMES``), never above the profile's ``cap``; the cap where none is asked."""
    if requested is None:
        return cap
    if not isinstance(requested, Mapping):
        raise Refused(400, "limits must be an object such as {\"max_budget\": 0.5}",
                      code="invalid_limits")
    unknown = sorted(set(requested) - set(LIMIT_NAMES))
    if unknown:
        raise Refused(400, f"unknown limit {unknown[0]!r}; known: {', '.join(LIMIT_NAMES)}",
                      code="invalid_limits")
    try:
        asked = Limits(**{k: v for k, v in requested.items() if v is not None})
    except ConfigError as exc:
        raise Refused(400, str(exc), code="invalid_limits") from exc
    values = {}
    for name in requested:
        mine, theirs = getattr(cap, name), getattr(asked, name)
        if theirs is not None and requested[name] is not None:
            values[name] = theirs if mine is None else min(mine, theirs)
    return replace(cap, **values)


# -- paths -------------------------------------------------------------------------------------
def data_path(data_dir: Path | None, given: Any) -> Path:
    """``given`` (relative to ``data_dir``, or absolute) as a path inside ``data_dir``:
    symbolic links are resolved first, so none leads out."""
    if not isinstance(given, str) or not given:
        raise Refused(400, "context_path must be a non-empty string", code="invalid_path")
    if data_dir is None:
        raise Refused(403, "this server reads no files: start it with --data-dir DIR",
                      kind="permission_error", code="no_data_dir")
    root = data_dir.resolve()
    try:
        path = (root / given).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long...
        raise Refused(400, f"context_path {given!r}: {exc}", code="invalid_path") from None
    if not path.is_relative_to(root):
        raise Refused(403, f"context_path {given!r} is outside the data directory",
                      kind="permission_error", code="path_outside_data_dir")
    if not path.exists():
        raise Refused(404, f"context_path {given!r} does not exist", code="path_not_found")
    if path.is_dir():
        for inner in path.rglob("*"):  # a link inside the folder must not lead out either
            if inner.is_symlink() and not inner.resolve().is_relative_to(root):
                raise Refused(403, f"context_path {given!r} holds a link out of the data "
                              "directory", kind="permission_error",
                              code="path_outside_data_dir")
    return path


# -- the daily spending cap ------------------------------------------------------------------
def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def seconds_to_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


class SpendLedger:
    """USD spent per UTC day, with room reserved by the runs under way.

    ``reserve(usd)`` holds a run's ``max_budget`` (at most what is left of the day);
    ``settle(reserved, spent)`` frees it and records what the run spent.  With ``path``
    the day's total survives a restart (a small JSON file, rewritten on each settle).
    Thread-safe.
    """

    def __init__(self, daily_usd: float | None, path: Path | None = None) -> None:
        if daily_usd is not None and not (math.isfinite(daily_usd) and daily_usd >= 0):
            raise ConfigError(f"the daily budget must be a number >= 0, got {daily_usd!r}")
        self.daily_usd = daily_usd
        self.path = path
        self._lock = threading.Lock()
        self._day, self._spent, self._reserved = _today(), 0.0, 0.0
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                self._spent = float(saved.get(self._day, 0.0))
            except (OSError, ValueError, AttributeError) as exc:
                raise ConfigError(f"spend file {path}: {exc}") from exc

    def _roll(self) -> None:
        today = _today()
        if today != self._day:
            self._day, self._spent = today, 0.0

    @property
    def spent_today(self) -> float:
        with self._lock:
            self._roll()
            return self._spent

    def reserve(self, wanted: float | None) -> float | None:
        """Room for one run: ``wanted`` (``None``: all that is left), at most what the day
        has left unreserved; ``None`` without a cap.  Raises ``Refused`` (429) when
        nothing is left."""
        if self.daily_usd is None:
            return wanted
        with self._lock:
            self._roll()
            free = self.daily_usd - self._spent - self._reserved
            if free <= 1e-12:
                wait = seconds_to_midnight() if self._reserved <= 1e-12 else 5
                raise Refused(429, f"the daily spending cap of ${self.daily_usd:g} is reached "
                              f"(${self._spent:.4f} spent, ${self._reserved:.4f} held by runs "
                              "under way)", kind="rate_limit_error", code="daily_budget",
                              retry_after_s=wait)
            room = free if wanted is None else min(wanted, free)
            self._reserved += room
            return room

    def settle(self, reserved: float | None, spent_usd: float) -> None:
        """Free a reservation and record what its run spent."""
        with self._lock:
            self._roll()
            if self.daily_usd is not None and reserved is not None:
                self._reserved = max(0.0, self._reserved - reserved)
            self._spent += max(0.0, spent_usd)
            if self.path is not None:
                self._save()

    def _save(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text(json.dumps({self._day: self._spent}), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:  # the cap still holds in memory
            _log.warning("spend file %s: %s", self.path, exc)
