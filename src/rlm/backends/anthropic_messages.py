"""The ``anthropic`` backend: Claude through the Messages API of the official SDK, with
prompt caching (extra ``anthropic``).

Prompt caching: the system prompt and, on a node's turns, the newest message and the one
that ended the node's previous turn carry ``cache_control`` breakpoints.  Turn k+1 re-sends
turn k's prompt plus two messages, so it reads turn k's whole prompt from the cache and
writes only the new part; cache writes and reads are charged at their own prices.
One-shot sub-calls (``llm_query``) cache only a system prompt, as a write costs more
than plain input and nothing would read it back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anthropic

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
from rlm.types import Completion, CompletionRequest, Message, estimate_tokens

__all__ = ["AnthropicBackend"]

_EPHEMERAL = {"type": "ephemeral"}
_ERROR_CHARS = 200
#: What one call reserves for its reply when it sets no ``max_output_tokens`` below this.
_RESERVED_OUTPUT = 1024


def _text_block(text: str, cached: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cached:
        block["cache_control"] = _EPHEMERAL
    return block


def _count(usage: Any, name: str) -> int:
    value = getattr(usage, name, None)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadResponseError(f"anthropic reported an impossible usage: {name}={value!r}; "
                               "the call is not charged")
    return value


class AnthropicBackend(LMBackend):
    """Claude models through ``anthropic.Anthropic().messages.create``.

    The key is ``api_key``, else ``$ANTHROPIC_API_KEY``; ``base_url`` points the SDK at
    another server.  Leading ``"system"`` messages go in the ``system`` field.  The
    price is ``price_per_mtok``, else the table's ``anthropic`` section.
    ``max_output_tokens`` is the reply's cap when a request sets none (the API needs
    one).  ``thinking_tokens`` turns extended thinking on with that budget (its tokens
    are output tokens).  ``prompt_caching=False`` sends no breakpoints.  ``temperature``
    is not sent: the current SDK's ``messages.create`` has no such parameter.  429 and 529
    (overloaded) answers, 5xx and dropped connections are retried ``max_retries`` times,
    honouring ``retry-after``; a 529 that outlasts them raises ``RateLimitError`` too.
    ``rpm`` / ``tpm`` limit requests and tokens per minute for the whole call tree
    (``rlm.backends.rate_limit``); a 429 or 529 pauses every caller once.
    """

    name = "anthropic"
    key_env_var = "ANTHROPIC_API_KEY"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_output_tokens: int = 4096, price_per_mtok: PriceSpec | None = None,
                 prompt_caching: bool = True, thinking_tokens: int | None = None,
                 context_window: int | None = 200_000,
                 rpm: float | None = None, tpm: float | None = None) -> None:
        if not (timeout_s > 0 and backoff_s >= 0 and isinstance(max_retries, int)
                and max_retries >= 0 and isinstance(max_output_tokens, int)
                and max_output_tokens > 0):
            raise ConfigError("timeout_s and max_output_tokens must be > 0; max_retries and "
                              "backoff_s must be >= 0")
        if thinking_tokens is not None and not (isinstance(thinking_tokens, int)
                                                and thinking_tokens >= 1024):
            raise ConfigError("thinking_tokens must be an int >= 1024 (the API's minimum)")
        self.model_name = model
        self.api_key = resolve_key(api_key, self.key_env_var, backend=self.name)
        self.base_url = base_url
        self.policy = RetryPolicy(timeout_s, max_retries, backoff_s)
        #: Shared by every caller of this instance: the whole call tree (``rpm``, ``tpm``).
        self.limiter = RateLimiter(rpm, tpm)
        self.max_output_tokens = max_output_tokens
        self.price_per_mtok: Price | None = price_of(price_per_mtok) \
            if price_per_mtok is not None else lookup("anthropic", model)
        self.prompt_caching = prompt_caching
        self.thinking_tokens = thinking_tokens
        self.context_window = context_window
        self._lock = threading.Lock()
        self._client: anthropic.Anthropic | None = None

    def _sdk(self) -> anthropic.Anthropic:
        with self._lock:
            if self._client is None:
                self._client = anthropic.Anthropic(api_key=self.api_key, base_url=self.base_url,
                                                   max_retries=0, timeout=self.policy.timeout_s)
            return self._client

    # -- the request --------------------------------------------------------------------------
    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request``."""
        messages: list[Message] = list(request.messages)
        system: list[str] = []
        while messages and messages[0].get("role") == "system":
            system.append(messages.pop(0).get("content", ""))
        turns = [{"role": "assistant" if m.get("role") == "assistant" else "user",
                  "content": m.get("content", "")} for m in messages]
        caching = self.prompt_caching
        marks: set[int] = set()
        if caching and turns and (request.purpose != "query" or request.cache_key):
            marks.add(len(turns) - 1)  # this turn's whole prompt, read by the next turn
            if len(turns) >= 3:
                marks.add(len(turns) - 3)  # where the previous turn's prompt ended
        for index in marks:
            turns[index] = {**turns[index],
                            "content": [_text_block(turns[index]["content"], True)]}
        out = request.max_output_tokens or self.max_output_tokens
        body: dict[str, Any] = {"model": request.model or self.model_name, "messages": turns,
                                "max_tokens": out}
        if system:
            body["system"] = [_text_block("\n\n".join(system), caching)]
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if self.thinking_tokens is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_tokens}
            body["max_tokens"] = out + self.thinking_tokens
        return body

    # -- errors -------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _classify(self, exc: Exception) -> Failure | None:
        where = f"{self.name} backend (model {self.model_name!r})"
        detail = self._scrub(" ".join(str(exc).split())[:_ERROR_CHARS])
        if isinstance(exc, anthropic.APITimeoutError):
            return Failure(BackendTimeoutError(f"{where}: no answer in time"))
        if isinstance(exc, anthropic.APIConnectionError):
            return Failure(BackendConnectionError(f"{where}: connection failed: {detail}"),
                           retryable=True)
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            message = f"{where}: HTTP {status}: {detail}"
            wait = retry_after_s(exc.response.headers)
            if status in (429, 529):
                return Failure(RateLimitError(message, status_code=status), True, wait)
            return Failure(BadResponseError(message, status_code=status), status >= 500, wait)
        if isinstance(exc, anthropic.AnthropicError):
            return Failure(BadResponseError(f"{where}: {type(exc).__name__}: {detail}"))
        return None

    # -- the call -----------------------------------------------------------------------------
    def complete(self, request: CompletionRequest) -> Completion:
        body, started = self._body(request), time.monotonic()
        client = self._sdk()
        booked = booked_tokens(request, body["max_tokens"])
        message = call_with_retries(
            self.name, request, self.policy,
            lambda timeout: client.messages.create(**body, timeout=timeout), self._classify,
            self.limiter, booked)
        completion = self._completion(message, started)
        self.limiter.settle(booked, completion.input_tokens + completion.output_tokens)
        return completion

    def _completion(self, message: Any, started: float) -> Completion:
        try:
            text = "".join(block.text for block in message.content
                           if getattr(block, "type", None) == "text")
            usage = message.usage
        except (AttributeError, TypeError) as exc:
            raise BadResponseError(f"{self.name} backend: malformed message: {exc}") from exc
        plain, out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
        written = _count(usage, "cache_creation_input_tokens")
        read = _count(usage, "cache_read_input_tokens")
        total = plain + written + read
        cost = None if self.price_per_mtok is None else self.price_per_mtok.cost(
            total, out, cache_read_tokens=read, cache_write_tokens=written)
        model = getattr(message, "model", None)
        return Completion(text=text, model=model if isinstance(model, str) and model
                          else self.model_name, input_tokens=total, output_tokens=out,
                          cost_usd=cost, latency_s=time.monotonic() - started,
                          cached_input_tokens=read)

    # -- LMBackend extras ---------------------------------------------------------------------
    def estimate_cost(self, request: CompletionRequest) -> float | None:
        """Input at the cache-write price (the dearest case), output up to 1,024 tokens."""
        if self.price_per_mtok is None:
            return None
        price = self.price_per_mtok
        out = request.max_output_tokens or min(self.max_output_tokens, _RESERVED_OUTPUT)
        per_input = max(price.input, price.write_price) if self.prompt_caching else price.input
        return (estimate_tokens(request.prompt_chars) * per_input + out * price.output) / 1e6

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name,
                "prompt_caching": self.prompt_caching}

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
