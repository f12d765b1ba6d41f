"""One rate limiter per backend instance, shared by every node and thread of the call tree.

A backend holds one ``RateLimiter``; the whole tree shares the backend, so it shares the
limiter.  Before each request (retries included) a caller waits for its turn:

- ``rpm``: requests per minute, spaced evenly (one every ``60 / rpm`` seconds);
- ``tpm``: tokens per minute, a bucket that holds a minute's worth and refills steadily; a
  request books its prompt estimate plus its reply cap, corrected by the usage it reports;
- a shared "not before" time: a 429 (with or without ``retry-after``) pauses every caller
  of the backend once, instead of each thread backing off on its own.

No wait ever runs past the request's deadline (``request.timeout_s``): a turn that would
come too late is not booked and the caller raises instead.  Waits watch ``request.cancel``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

from rlm.errors import BackendError, Cancelled, ConfigError, RateLimitError
from rlm.types import CompletionRequest, estimate_tokens

__all__ = ["RateLimiter", "booked_tokens", "check_rate"]

_POLL_S = 0.05


def check_rate(name: str, value: float | None) -> float | None:
    """``value`` when it is ``None`` or a positive finite number, else ``ConfigError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number (per minute), got {value!r}")
    return float(value)


def booked_tokens(request: CompletionRequest, reply_cap: int | None) -> int:
    """What a request books with a ``tpm`` limit: its prompt estimate plus its reply cap
    (providers count ``max_tokens`` against the limit until the reply is known)."""
    return estimate_tokens(request.prompt_chars) + (request.max_output_tokens or reply_cap
                                                     or 0)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits plus a shared pause (thread-safe)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = check_rate("rpm", rpm)
        self.tpm = check_rate("tpm", tpm)
        self._clock = clock
        self._lock = threading.Lock()
        self._next_request = 0.0  # the earliest time the next request may go out
        self._tokens = self.tpm or 0.0  # what the token bucket holds (may go negative)
        self._filled_at = clock()
        self._not_before = 0.0
        #: How many times a 429 moved the shared pause later (for tests and traces).
        self.pauses = 0

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    @property
    def not_before(self) -> float:
        """The clock time before which no caller sends (0.0: no pause)."""
        with self._lock:
            return self._not_before

    def pause(self, seconds: float) -> float:
        """Hold every caller for ``seconds`` from now (a 429's ``retry-after`` or backoff);
        a pause already ending later stands.  Returns when the pause ends."""
        with self._lock:
            end = self._clock() + max(seconds, 0.0)
            if end > self._not_before:
                self._not_before = end
                self.pauses += 1
            return self._not_before

    def reserve(self, tokens: int, deadline: float) -> float | None:
        """Book one request of about ``tokens`` tokens: the seconds to wait before sending
        it, or ``None`` (nothing booked) when that wait would end past ``deadline``."""
        with self._lock:
            now = self._clock()
            start = max(now, self._not_before)
            if self.rpm is not None:
                start = max(start, self._next_request)
            need = 0.0
            if self.tpm is not None:
                rate = self.tpm / 60.0
                level = min(self.tpm, self._tokens + (now - self._filled_at) * rate)
                need = min(float(tokens), self.tpm)  # a huge request waits for a full bucket
                if level < need:
                    start = max(start, now + (need - level) / rate)
            if start > deadline:
                return None
            if self.rpm is not None:
                self._next_request = start + 60.0 / self.rpm
            if self.tpm is not None:
                self._tokens = level - float(tokens)
                self._filled_at = now
            return start - now

    def settle(self, booked: int, used: int) -> None:
        """Correct a booking by what the request really used (its reported usage)."""
        if self.tpm is None or booked == used:
            return
        with self._lock:
            self._tokens = min(self.tpm, self._tokens + booked - used)

    # -- waiting for a turn -----------------------------------------------------------------
    def _too_late(self, what: str, error: BackendError | None) -> BackendError:
        if error is not None:
            return error
        limits = ", ".join(f"{name}={value:g}" for name, value in
                           (("rpm", self.rpm), ("tpm", self.tpm)) if value is not None)
        why = f"the rate limit ({limits})" if limits else "the provider's retry-after pause"
        return RateLimitError(f"{what}: {why} leaves no time before the call's deadline")

    @staticmethod
    def _cancelled(what: str, error: BackendError | None) -> Cancelled:
        after = f" (retrying after: {error})" if error is not None else ""
        return Cancelled(f"{what} call cancelled while waiting for its rate-limit turn{after}")

    def wait_turn(self, what: str, tokens: int, deadline: float,
                  cancel: threading.Event | None, error: BackendError | None = None) -> None:
        """Block until this request's turn; ``error`` (or a ``RateLimitError``) if the turn
        comes past ``deadline``; ``Cancelled`` if the tree stops meanwhile."""
        wait = self.reserve(tokens, deadline)
        if wait is None:
            raise self._too_late(what, error)
        if wait <= 0:
            return
        if cancel is None:
            time.sleep(wait)
        elif cancel.wait(wait):
            raise self._cancelled(what, error)

    async def await_turn(self, what: str, tokens: int, deadline: float,
                         cancel: threading.Event | None,
                         error: BackendError | None = None) -> None:
        """``wait_turn`` for coroutines: sleeps without blocking the event loop."""
        wait = self.reserve(tokens, deadline)
        if wait is None:
            raise self._too_late(what, error)
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            if cancel is not None and cancel.is_set():
                raise self._cancelled(what, error)
            await asyncio.sleep(min(left, _POLL_S))
