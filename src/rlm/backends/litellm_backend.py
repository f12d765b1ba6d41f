"""The ``litellm`` backend: every provider LiteLLM reaches, through ``litellm.completion``
(extra ``litellm``).

``model`` is LiteLLM's ``"provider/model"`` name (``anthropic/claude-sonnet-4``,
``openai/gpt-4o``, ``hosted_vllm/...``); LiteLLM reads each provider's own key variable,
or ``api_key``; ``base_url`` goes out as LiteLLM's ``api_base``.  The price is
``price_per_mtok``, else this package's table (``lookup`` by the vendor prefix), else
LiteLLM's own cost map (the copy shipped in the ``litellm`` package: it is never fetched),
else unknown.  LiteLLM's retries are off: the shared retry loop (``sdk_retries``) and rate
limiter (``rate_limit``) run instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import

import litellm
import openai

from rlm.backends.base import LMBackend
from rlm.backends.prices import Price, PriceSpec, lookup, price_of
from rlm.backends.rate_limit import RateLimiter, booked_tokens
from rlm.backends.sdk_retries import (
    Failure,
    RetryPolicy,
    call_with_retries,
    retry_after_s,
)
from rlm.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    BadResponseError,
    ConfigError,
    RateLimitError,
)
from rlm.types import Completion, CompletionRequest, estimate_tokens

__all__ = ["LiteLLMBackend", "litellm_price"]

litellm.suppress_debug_info = True
_ERROR_CHARS = 200
_RESERVED_OUTPUT = 1024


def _per_mtok(info: dict[str, Any], name: str) -> float | None:
    value = info.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value) * 1e6


def litellm_price(model: str) -> Price | None:
    """A model's price from LiteLLM's cost map (USD per million tokens), ``None`` if absent."""
    _, _, bare = model.partition("/")
    info = litellm.model_cost.get(model) or (litellm.model_cost.get(bare) if bare else None)
    if not isinstance(info, dict):
        return None
    price_in = _per_mtok(info, "input_cost_per_token")
    price_out = _per_mtok(info, "output_cost_per_token")
    if price_in is None or price_out is None:
        return None
    return Price(price_in, price_out, _per_mtok(info, "cache_creation_input_token_cost"),
                 _per_mtok(info, "cache_read_input_token_cost"))


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or an exception it was raised from is one of ``kinds`` (LiteLLM
    reports a dropped connection as an ``InternalServerError`` raised from one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _count(usage: Any, name: str) -> Any:
    value = getattr(usage, name, None) if usage is not None else None
    return 0 if value is None else value


class LiteLLMBackend(LMBackend):
    """Any LiteLLM model through ``litellm.completion``.

    ``price_source`` says where the price came from: ``"override"``, ``"rlm"`` (this
    package's table), ``"litellm"`` (its cost map) or ``None`` (unknown: ``cost_usd`` is
    ``None`` and ``max_budget`` refuses the backend).  ``extra_body`` holds more keyword
    arguments of ``litellm.completion``.  429, 5xx and dropped connections are retried
    ``max_retries`` times, honouring ``retry-after``; ``rpm`` / ``tpm`` limit the whole
    call tree.
    """

    name = "litellm"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5,
                 price_per_mtok: PriceSpec | None = None,
                 extra_body: dict[str, Any] | None = None, rpm: float | None = None,
                 tpm: float | None = None, context_window: int | None = None) -> None:
        if not (timeout_s > 0 and backoff_s >= 0 and isinstance(max_retries, int)
                and max_retries >= 0):
            raise ConfigError("timeout_s must be > 0; max_retries and backoff_s must be >= 0")
        self.model_name = model
        self.api_key = api_key
        self.base_url = base_url
        self.policy = RetryPolicy(timeout_s, max_retries, backoff_s)
        self.extra_body = dict(extra_body or {})
        self.limiter = RateLimiter(rpm, tpm)
        self.context_window = context_window
        self.price_source: str | None
        if price_per_mtok is not None:
            self.price_per_mtok: Price | None = price_of(price_per_mtok)
            self.price_source = "override"
        elif (ours := lookup(None, model)) is not None:
            self.price_per_mtok, self.price_source = ours, "rlm"
        elif (theirs := litellm_price(model)) is not None:
            self.price_per_mtok, self.price_source = theirs, "litellm"
        else:
            self.price_per_mtok, self.price_source = None, None

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {**self.extra_body, "model": request.model or self.model_name,
                                "messages": list(request.messages), "num_retries": 0,
                                "max_retries": 0}
        if self.api_key:
            body["api_key"] = self.api_key
        if self.base_url:
            body["api_base"] = self.base_url
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _classify(self, exc: Exception) -> Failure | None:
        where = f"{self.name} backend (model {self.model_name!r})"
        detail = self._scrub(" ".join(str(exc).split())[:_ERROR_CHARS])
        if isinstance(exc, litellm.Timeout | openai.APITimeoutError):
            return Failure(BackendTimeoutError(f"{where}: no answer in time"))
        if isinstance(exc, litellm.RateLimitError | openai.RateLimitError):
            response = getattr(exc, "response", None)
            wait = retry_after_s(getattr(response, "headers", None))
            return Failure(RateLimitError(f"{where}: HTTP 429: {detail}", status_code=429),
                           True, wait)
        if isinstance(exc, litellm.APIConnectionError | openai.APIConnectionError) or (
                isinstance(exc, litellm.InternalServerError)
                and _caused_by(exc, (openai.APIConnectionError,))):
            return Failure(BackendConnectionError(f"{where}: connection failed: {detail}"),
                           retryable=True)
        if isinstance(exc, openai.OpenAIError):
            status = getattr(exc, "status_code", None)
            status = status if isinstance(status, int) else None
            retry = status is not None and status >= 500
            return Failure(BadResponseError(f"{where}: HTTP {status}: {detail}",
                                            status_code=status), retry)
        return None

    def complete(self, request: CompletionRequest) -> Completion:
        body, started = self._body(request), time.monotonic()
        booked = booked_tokens(request, request.max_output_tokens)
        response = call_with_retries(
            self.name, request, self.policy,
            lambda timeout: litellm.completion(**body, timeout=timeout), self._classify,
            self.limiter, booked)
        completion = self._completion(response, request, started)
        self.limiter.settle(booked, completion.total_tokens)
        return completion

    def _completion(self, response: Any, request: CompletionRequest,
                    started: float) -> Completion:
        try:
            text = response.choices[0].message.content or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
            usage = getattr(response, "usage", None)
        except (AttributeError, LookupError, TypeError) as exc:
            raise BadResponseError(f"{self.name} backend: malformed response: {exc}") from exc
        prompt = getattr(usage, "prompt_tokens", None)
        out = getattr(usage, "completion_tokens", None)
        details = getattr(usage, "prompt_tokens_details", None)
        read = _count(details, "cached_tokens") or _count(usage, "cache_read_input_tokens")
        written = _count(usage, "cache_creation_input_tokens")
        model = getattr(response, "model", None)
        if not (isinstance(model, str) and model) or self.model_name.endswith("/" + model):
            model = self.model_name  # LiteLLM drops the provider prefix: keep the given name
        completion = Completion(  # checks the counts: impossible usage is never charged
            text=text, model=model,
            input_tokens=estimate_tokens(request.prompt_chars) if prompt is None else prompt,
            output_tokens=estimate_tokens(len(text)) if out is None else out,
            latency_s=time.monotonic() - started, cached_input_tokens=read)
        if self.price_per_mtok is None:
            return completion
        written = min(written if isinstance(written, int) else 0,
                      completion.input_tokens - completion.cached_input_tokens)
        cost = self.price_per_mtok.cost(completion.input_tokens, completion.output_tokens,
                                        cache_read_tokens=completion.cached_input_tokens,
                                        cache_write_tokens=max(written, 0))
        return Completion(text=completion.text, model=completion.model,
                          input_tokens=completion.input_tokens,
                          output_tokens=completion.output_tokens, cost_usd=cost,
                          latency_s=completion.latency_s,
                          cached_input_tokens=completion.cached_input_tokens)

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        if self.price_per_mtok is None:
            return None
        price = self.price_per_mtok
        out = request.max_output_tokens or _RESERVED_OUTPUT
        per_input = max(price.input, price.write_price)
        return (estimate_tokens(request.prompt_chars) * per_input + out * price.output) / 1e6

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name,
                "price_source": self.price_source}
