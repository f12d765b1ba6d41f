"""The retry state of one call of the OpenAI-compatible backend, and its ``httpx`` errors.

``Attempts`` holds one logical call's deadline, retry count and idempotency key (the same
on every retry, so a provider that honours ``Idempotency-Key`` bills a POST re-sent after a
dropped connection once).  A 429 pauses the backend's shared ``RateLimiter`` instead of
this call alone, so the whole call tree waits out a ``Retry-After`` together.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from rlm.backends.rate_limit import RateLimiter
from rlm.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    Cancelled,
)
from rlm.types import CompletionRequest

__all__ = ["CANCEL_POLL_S", "DEADLINE_GRACE_S", "ERROR_CHARS", "Attempts", "finite",
           "retry_after", "translate_errors"]

_MAX_RETRY_AFTER_S = 60.0
ERROR_CHARS = 200
#: How often a request in flight looks at ``request.cancel``.
CANCEL_POLL_S = 0.05
#: After a timeout at the tree's deadline (``request.timeout_s``), how long to wait for the
#: tree's own watchdog to trip, so that the run ends on its time limit, not on this error.
DEADLINE_GRACE_S = 0.5


@contextlib.contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn ``httpx`` exceptions into ``rlm.BackendError`` subclasses (the only place)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise BackendTimeoutError(f"{where}: no answer in time ({type(exc).__name__})") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise BackendConnectionError(f"{where}: connection failed ({type(exc).__name__}: "
                                     f"{str(exc)[:ERROR_CHARS]})") from exc
    except httpx.HTTPError as exc:
        raise BadResponseError(f"{where}: {type(exc).__name__}: {str(exc)[:ERROR_CHARS]}") from exc


def finite(value: Any) -> bool:
    """A real number (not ``bool``), neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def retry_after(value: str | None, default: float) -> float:
    """A numeric ``Retry-After`` header in seconds (capped), else ``default`` (dates too)."""
    try:
        seconds = float(value or "")
    except ValueError:
        return default
    return min(seconds, _MAX_RETRY_AFTER_S) if math.isfinite(seconds) and seconds >= 0 \
        else default


class Attempts:
    """Retry state of one request: the deadline, the attempt count and the next delay.

    ``backend`` is an ``OpenAIBackend`` (its ``name``, ``timeout_s``, ``max_retries``,
    ``backoff_s`` and ``limiter``); ``booked`` is what each try books with the limiter."""

    def __init__(self, backend: Any, request: CompletionRequest, booked: int = 0) -> None:
        self.backend = backend
        self.limiter: RateLimiter = backend.limiter
        self.booked = booked
        self.cancel = request.cancel
        limit = backend.timeout_s
        if request.timeout_s is not None:
            limit = min(limit, request.timeout_s)
        self.started = time.monotonic()
        self.deadline = self.started + max(limit, 0.001)
        self.retries = 0
        #: The ``Idempotency-Key`` of this logical call: the same on each of its retries.
        self.idempotency_key = uuid.uuid4().hex
        #: Whether the deadline is the call tree's (what is left of ``max_timeout``).
        self.tree_deadline = (request.timeout_s is not None
                              and request.timeout_s < backend.timeout_s)

    def timeout(self) -> float:
        """The timeout of the next attempt: what is left before the deadline."""
        return max(self.deadline - time.monotonic(), 0.001)

    def delay(self, outcome: httpx.Response | BackendError) -> float | None:
        """Seconds to wait before retrying after ``outcome``, or ``None`` to stop.  After a
        429 the wait is the shared limiter's pause (0.0 here: the next turn waits)."""
        if isinstance(outcome, httpx.Response):
            if outcome.status_code != 429 and outcome.status_code < 500:
                return None
        elif not isinstance(outcome, BackendConnectionError):
            return None
        if self.retries >= self.backend.max_retries:
            return None
        delay = self.backend.backoff_s * 2**self.retries * random.uniform(0.75, 1.25)
        if isinstance(outcome, httpx.Response):
            delay = retry_after(outcome.headers.get("retry-after"), delay)
        if time.monotonic() + delay >= self.deadline:
            return None
        self.retries += 1
        if isinstance(outcome, httpx.Response) and outcome.status_code == 429:
            self.limiter.settle(self.booked, 0)  # a refused request used no tokens
            self.limiter.pause(delay)  # every caller of the backend waits, this one too
            return 0.0
        return max(delay, 0.0)

    def cancelled(self, outcome: httpx.Response | BackendError) -> Cancelled:
        what = f"HTTP {outcome.status_code}" if isinstance(outcome, httpx.Response) else outcome
        return Cancelled(f"{self.backend.name} call cancelled while retrying after {what}")

    def cancelled_in_flight(self) -> Cancelled:
        return Cancelled(f"{self.backend.name} call cancelled while waiting for the reply")

    def stopped_by_tree(self, outcome: BackendError) -> bool:
        """Whether a failed attempt is the call tree stopping (a cancel, its deadline): the
        caller then raises ``Cancelled`` and the run ends with the tree's stop reason."""
        if self.cancel is None:
            return False
        if self.cancel.is_set():
            return True
        if isinstance(outcome, BackendTimeoutError) and self.tree_deadline:
            return self.cancel.wait(DEADLINE_GRACE_S)  # the watchdog trips at the deadline
        return False
