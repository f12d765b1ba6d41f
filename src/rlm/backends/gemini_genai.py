"""The ``gemini`` backend: Gemini models through ``generate_content`` of the official
``google-genai`` SDK (extra ``gemini``).

Leading ``"system"`` messages become the system instruction; assistant turns are the
``model`` role.  Gemini caches repeated prompt prefixes by itself (implicit caching): the
cached part it reports (``cached_content_token_count``) is charged at the cache price.
A prompt or reply stopped by the safety filters raises ``BadResponseError`` naming the
reason, and is not charged.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from google import genai
from google.genai import errors as genai_errors

from rlm.backends.base import LMBackend, resolve_key
from rlm.backends.prices import Price, PriceSpec, lookup, price_of
from rlm.backends.rate_limit import RateLimiter, booked_tokens
from rlm.backends.sdk_retries import Failure, RetryPolicy, call_with_retries, retry_after_s
from rlm.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    BadResponseError,
    ConfigError,
    RateLimitError,
)
from rlm.types import Completion, CompletionRequest, estimate_tokens

__all__ = ["GeminiBackend"]

_ERROR_CHARS = 200
_RESERVED_OUTPUT = 1024
#: Finish reasons that mean the safety filters (or a policy) stopped the reply.
_BLOCKED = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
            "IMAGE_SAFETY"}


def _name(value: Any) -> str | None:
    """An SDK enum's name (``FinishReason.SAFETY`` -> ``"SAFETY"``), or ``None``."""
    if value is None:
        return None
    return str(getattr(value, "name", value))


def _count(usage: Any, name: str) -> int:
    value = getattr(usage, name, None) if usage is not None else None
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadResponseError(f"gemini reported an impossible usage: {name}={value!r}; "
                               "the call is not charged")
    return value


def _transport(exc: Exception) -> str | None:
    """``"timeout"`` or ``"connection"`` for the HTTP client's own errors (the SDK lets
    them through unwrapped), else ``None``."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "TimeoutException" in names:
        return "timeout"
    if names & {"TransportError", "NetworkError", "RemoteProtocolError"}:
        return "connection"
    return None


class GeminiBackend(LMBackend):
    """Gemini models through ``genai.Client().models.generate_content``.

    The key is ``api_key``, else ``$GEMINI_API_KEY`` (or ``$GOOGLE_API_KEY``);
    ``base_url`` points the SDK at another server.  The price is ``price_per_mtok``,
    else the table's ``gemini`` section; thinking tokens count as output.  429, 5xx and
    dropped connections are retried ``max_retries`` times, honouring ``retry-after``.
    ``rpm`` / ``tpm`` limit requests and tokens per minute for the whole call tree
    (``rlm.backends.rate_limit``); a 429 pauses every caller once.
    """

    name = "gemini"
    key_env_var = "GEMINI_API_KEY"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_output_tokens: int | None = None, price_per_mtok: PriceSpec | None = None,
                 context_window: int | None = 1_000_000,
                 rpm: float | None = None, tpm: float | None = None) -> None:
        if not (timeout_s > 0 and backoff_s >= 0 and isinstance(max_retries, int)
                and max_retries >= 0):
            raise ConfigError("timeout_s must be > 0; max_retries and backoff_s must be >= 0")
        self.model_name = model
        key = api_key or os.environ.get(self.key_env_var) or os.environ.get("GOOGLE_API_KEY")
        self.api_key = resolve_key(key, self.key_env_var, backend=self.name)
        self.base_url = base_url
        self.policy = RetryPolicy(timeout_s, max_retries, backoff_s)
        #: Shared by every caller of this instance: the whole call tree (``rpm``, ``tpm``).
        self.limiter = RateLimiter(rpm, tpm)
        self.max_output_tokens = max_output_tokens
        self.price_per_mtok: Price | None = price_of(price_per_mtok) \
            if price_per_mtok is not None else lookup("gemini", model)
        self.context_window = context_window
        self._lock = threading.Lock()
        self._client: genai.Client | None = None

    def _sdk(self) -> genai.Client:
        with self._lock:
            if self._client is None:
                options: dict[str, Any] = {"timeout": int(self.policy.timeout_s * 1000)}
                if self.base_url:
                    options["base_url"] = self.base_url
                self._client = genai.Client(api_key=self.api_key, http_options=options)
            return self._client

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        """The keyword arguments of ``generate_content`` for ``request`` (but the timeout)."""
        messages = list(request.messages)
        system: list[str] = []
        while messages and messages[0].get("role") == "system":
            system.append(messages.pop(0).get("content", ""))
        contents = [{"role": "model" if m.get("role") == "assistant" else "user",
                     "parts": [{"text": m.get("content", "")}]} for m in messages]
        config: dict[str, Any] = {}
        if system:
            config["system_instruction"] = "\n\n".join(system)
        out = request.max_output_tokens or self.max_output_tokens
        if out is not None:
            config["max_output_tokens"] = out
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        return {"model": request.model or self.model_name, "contents": contents,
                "config": config}

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _classify(self, exc: Exception) -> Failure | None:
        where = f"{self.name} backend (model {self.model_name!r})"
        detail = self._scrub(" ".join(str(exc).split())[:_ERROR_CHARS])
        kind = _transport(exc)
        if kind == "timeout":
            return Failure(BackendTimeoutError(f"{where}: no answer in time"))
        if kind == "connection":
            return Failure(BackendConnectionError(f"{where}: connection failed: {detail}"),
                           retryable=True)
        if isinstance(exc, genai_errors.APIError):
            status = exc.code if isinstance(exc.code, int) else 0
            message = f"{where}: HTTP {status}: {detail}"
            wait = retry_after_s(getattr(getattr(exc, "response", None), "headers", None))
            if status == 429:
                return Failure(RateLimitError(message, status_code=status), True, wait)
            return Failure(BadResponseError(message, status_code=status), status >= 500, wait)
        return None

    def complete(self, request: CompletionRequest) -> Completion:
        body, started = self._body(request), time.monotonic()
        models = self._sdk().models

        def attempt(timeout: float) -> Any:
            config = {**body["config"], "http_options": {"timeout": max(int(timeout * 1000),
                                                                        1)}}
            return models.generate_content(model=body["model"], contents=body["contents"],
                                           config=config)

        booked = booked_tokens(request, body["config"].get("max_output_tokens"))
        response = call_with_retries(self.name, request, self.policy, attempt, self._classify,
                                     self.limiter, booked)
        completion = self._completion(response, started)
        self.limiter.settle(booked, completion.input_tokens + completion.output_tokens)
        return completion

    def _completion(self, response: Any, started: float) -> Completion:
        where = f"{self.name} backend (model {self.model_name!r})"
        feedback = getattr(response, "prompt_feedback", None)
        blocked = _name(getattr(feedback, "block_reason", None))
        if blocked:
            raise BadResponseError(f"{where}: the prompt was blocked by Gemini's safety "
                                   f"filters (block reason {blocked}); nothing was generated")
        candidates = getattr(response, "candidates", None) or []
        if not candidates:
            raise BadResponseError(f"{where}: the response has no candidate")
        candidate = candidates[0]
        finish = _name(getattr(candidate, "finish_reason", None))
        parts = getattr(getattr(candidate, "content", None), "parts", None) or []
        text = "".join(p.text for p in parts if getattr(p, "text", None)
                       and not getattr(p, "thought", False))
        if finish in _BLOCKED and not text:
            raise BadResponseError(f"{where}: the reply was stopped by Gemini's safety "
                                   f"filters (finish reason {finish})")
        usage = getattr(response, "usage_metadata", None)
        prompt = _count(usage, "prompt_token_count")
        cached = min(_count(usage, "cached_content_token_count"), prompt)
        out = _count(usage, "candidates_token_count") + _count(usage, "thoughts_token_count")
        cost = None if self.price_per_mtok is None else self.price_per_mtok.cost(
            prompt, out, cache_read_tokens=cached)
        model = getattr(response, "model_version", None)
        return Completion(text=text, model=model if isinstance(model, str) and model
                          else self.model_name, input_tokens=prompt, output_tokens=out,
                          cost_usd=cost, latency_s=time.monotonic() - started,
                          cached_input_tokens=cached)

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        """Input at the full price, output up to 1,024 tokens."""
        if self.price_per_mtok is None:
            return None
        out = request.max_output_tokens or min(self.max_output_tokens or _RESERVED_OUTPUT,
                                               _RESERVED_OUTPUT)
        return (estimate_tokens(request.prompt_chars) * self.price_per_mtok.input
                + out * self.price_per_mtok.output) / 1e6

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name}

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
