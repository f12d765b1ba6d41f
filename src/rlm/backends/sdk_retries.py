"""The retry loop of the backends built on a provider's SDK (``anthropic``, ``gemini``).

``call_with_retries`` runs one blocking SDK call until it answers, retrying what the
backend's ``classify`` marks retryable (429, overload, 5xx, a dropped connection) with
exponential backoff or the server's ``retry-after``, within the request's deadline.  The
SDK's own retries are off (``max_retries=0``): they would not watch ``request.cancel``.
When the call tree stops (``request.cancel``), a call in flight or a wait between tries
ends at once with ``Cancelled``; the abandoned SDK call ends by itself at its timeout.
With a ``RateLimiter`` (``rlm.backends.rate_limit``), every try waits for its turn, and a
rate-limit answer pauses every caller of the backend once (its ``retry-after``, else the
backoff delay) rather than this call alone.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rlm.backends.rate_limit import RateLimiter
from rlm.errors import BackendError, BackendTimeoutError, Cancelled, RateLimitError
from rlm.types import CompletionRequest

__all__ = ["Failure", "RetryPolicy", "call_with_retries", "retry_after_s"]

T = TypeVar("T")
_MAX_RETRY_AFTER_S = 60.0
_CANCEL_POLL_S = 0.05
#: After a timeout at the tree's deadline, how long to wait for the tree's watchdog.
_DEADLINE_GRACE_S = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """Seconds per request, how many retries, the first backoff delay."""

    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 0.5


@dataclass(frozen=True)
class Failure:
    """What ``classify`` makes of an SDK exception: the rlm error, whether to retry, and
    the server's ``retry-after`` (seconds, ``None`` if it sent none)."""

    error: BackendError
    retryable: bool = False
    retry_after_s: float | None = None


def retry_after_s(headers: object) -> float | None:
    """``retry-after-ms`` or a numeric ``retry-after`` of response headers (capped)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            seconds = float(get(name) or "") * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, _MAX_RETRY_AFTER_S)
    return None


def _in_thread(fn: Callable[[], T], cancel: threading.Event, what: str) -> T:
    """``fn()`` in a worker thread, abandoned with ``Cancelled`` when ``cancel`` is set."""
    done = threading.Event()
    box: list[tuple[bool, object]] = []

    def work() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed over to the caller's thread
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=work, daemon=True, name=f"rlm-{what}-request").start()
    while not done.wait(_CANCEL_POLL_S):
        if cancel.is_set():
            raise Cancelled(f"{what} call cancelled while waiting for the reply")
    ok, value = box[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def call_with_retries(what: str, request: CompletionRequest, policy: RetryPolicy,
                      attempt: Callable[[float], T],
                      classify: Callable[[Exception], Failure | None],
                      limiter: RateLimiter | None = None, tokens: int = 0) -> T:
    """``attempt(timeout_s)`` until it returns; ``classify`` maps what it raises (``None``:
    not an SDK error, raised as it is).  Raises the last ``Failure.error``, or
    ``Cancelled`` when the tree stops.  ``limiter``: each try books ``tokens`` with it
    first (the caller settles the last booking with the usage reported)."""
    limit = policy.timeout_s if request.timeout_s is None else min(policy.timeout_s,
                                                                   request.timeout_s)
    deadline = time.monotonic() + max(limit, 0.001)
    tree_deadline = request.timeout_s is not None and request.timeout_s < policy.timeout_s
    cancel, retries = request.cancel, 0
    error: BackendError | None = None
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{what} call cancelled before it was sent")
        if limiter is not None:
            limiter.wait_turn(what, tokens, deadline, cancel, error)
        timeout = max(deadline - time.monotonic(), 0.001)
        try:
            if cancel is None:
                return attempt(timeout)
            return _in_thread(lambda t=timeout: attempt(t), cancel, what)  # type: ignore[misc]
        except Cancelled:
            raise
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
        error = failure.error
        if cancel is not None and (cancel.is_set() or (
                isinstance(error, BackendTimeoutError) and tree_deadline
                and cancel.wait(_DEADLINE_GRACE_S))):
            raise Cancelled(f"{what} call cancelled: the call tree stopped") from error
        if not failure.retryable or retries >= policy.max_retries:
            raise error
        delay = policy.backoff_s * 2**retries * random.uniform(0.75, 1.25)
        if failure.retry_after_s is not None:
            delay = failure.retry_after_s
        if time.monotonic() + delay >= deadline:
            raise error
        retries += 1
        if limiter is not None and isinstance(error, RateLimitError):
            limiter.settle(tokens, 0)  # a refused request used no tokens
            limiter.pause(delay)  # the whole tree waits, at the top of the loop
            continue
        if cancel is None:
            time.sleep(delay)
        elif cancel.wait(delay):
            raise Cancelled(f"{what} call cancelled while retrying after: {error}") from error
