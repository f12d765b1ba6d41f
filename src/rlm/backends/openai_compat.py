"""A backend for any OpenAI-compatible chat-completions server, built on ``httpx``.

Works with OpenAI itself and with servers that speak the same API: vLLM, Ollama, llama.cpp
server, OpenRouter, Groq...  ``provider=...`` picks a preset (``rlm.backends.presets``): base
URL, key variable and price section (``rlm.backends.prices``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import replace
from typing import Any

import httpx

from rlm.backends.base import LMBackend, resolve_key
from rlm.backends.openai_attempts import CANCEL_POLL_S as _CANCEL_POLL_S
from rlm.backends.openai_attempts import DEADLINE_GRACE_S as _DEADLINE_GRACE_S
from rlm.backends.openai_attempts import ERROR_CHARS as _ERROR_CHARS
from rlm.backends.openai_attempts import Attempts as _Attempts
from rlm.backends.openai_attempts import finite as _finite
from rlm.backends.openai_attempts import translate_errors as _translate_errors
from rlm.backends.openai_responses import read_chat, read_responses, responses_body
from rlm.backends.presets import PRESETS, reported_cost
from rlm.backends.prices import Price, PriceSpec, entries, lookup, price_of
from rlm.backends.rate_limit import RateLimiter, booked_tokens
from rlm.errors import (
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    ConfigError,
    RateLimitError,
)
from rlm.types import Completion, CompletionRequest, estimate_tokens

__all__ = ["LOCAL_HOSTS", "PRESETS", "PRICES_PER_MTOK", "OpenAIBackend"]

#: USD per million (input, output) tokens of well-known OpenAI models (the price table's).
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    model: (price.input, price.output) for model, price in entries("openai")}

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OpenAIBackend(LMBackend):
    """Chat completions from an OpenAI-compatible server (``POST {base_url}/chat/completions``).

    The API key is ``api_key``, else the provider's environment variable; servers on localhost
    need none. The price comes from ``price_per_mtok`` (a ``Price`` or ``(input, output[,
    cache_write, cache_read])`` USD per million tokens), else the price table's section of the
    provider (0.0 on localhost); an unknown price gives ``cost_usd=None``. Cached prompt tokens
    the server reports are charged at the cache-read price; a provider that reports each call's
    cost (OpenRouter's ``usage.cost``) is charged that. 429, 5xx and connection errors are
    retried ``max_retries`` times with exponential backoff (``Retry-After`` is honoured). When
    the call tree stops (``request.cancel``: a cancel, ``max_timeout``), a request in flight or
    a retry's wait ends at once with ``Cancelled``, so the run ends with the tree's stop reason
    instead of waiting for the provider. A typed sub-call's ``response_schema`` goes out as
    ``response_format`` (``json_schema``, not strict) while ``structured_output`` is true; a
    server that answers HTTP 400 about it gets the request again without it, and
    ``structured_output`` turns false for the calls after.

    ``api="responses"`` uses the Responses API (``POST {base_url}/responses``, for reasoning
    models: ``extra_body={"reasoning": {"effort": "low"}}``) instead of chat completions; its
    reasoning tokens are output tokens.  ``rpm`` / ``tpm`` limit requests and tokens per
    minute for every caller of this instance, i.e. the whole call tree, and a 429 pauses them
    all once (``rlm.backends.rate_limit``).  Each logical call sends an ``Idempotency-Key``
    header, the same on its retries (``idempotency=False``: none).
    """

    name = "openai"
    key_env_var = "OPENAI_API_KEY"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        price_per_mtok: PriceSpec | None = None,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        structured_output: bool = True,
        api: str = "chat",
        rpm: float | None = None,
        tpm: float | None = None,
        idempotency: bool = True,
    ) -> None:
        if provider is not None and provider not in PRESETS:
            raise ConfigError(f"unknown provider {provider!r}; known: {', '.join(PRESETS)}")
        if not (_finite(timeout_s) and timeout_s > 0 and _finite(backoff_s) and backoff_s >= 0
                and isinstance(max_retries, int) and max_retries >= 0):
            raise ConfigError("timeout_s must be > 0; max_retries and backoff_s must be >= 0")
        if api not in ("chat", "responses"):
            raise ConfigError(f"api must be 'chat' or 'responses', got {api!r}")
        self.api = api
        self._path = "responses" if api == "responses" else "chat/completions"
        #: Shared by every caller of this instance, so by the whole call tree.
        self.limiter = RateLimiter(rpm, tpm)
        self.idempotency = idempotency
        price = None if price_per_mtok is None else price_of(price_per_mtok)
        self.preset = preset = PRESETS[provider or "openai"]
        key_env = preset.key_env
        self.model_name = model
        self.provider = preset.name
        self.base_url = preset.url(base_url)
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        self.is_local = url.host in LOCAL_HOSTS
        self._where = f"{self.name} backend ({self.base_url})"
        if self.is_local or preset.local:  # a self-hosted server needs no key
            self.api_key = api_key or (os.environ.get(key_env) if key_env else None) or None
        else:
            self.api_key = resolve_key(api_key, key_env, backend=provider or self.name)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        known = Price(0.0, 0.0) if self.is_local or preset.local \
            else lookup(preset.prices, model)
        self.price_per_mtok: Price | None = price or known
        self.extra_body = dict(extra_body or {})
        self.structured_output = structured_output
        auth = {} if not self.api_key else {preset.key_header: self.api_key} \
            if preset.key_header else {"Authorization": f"Bearer {self.api_key}"}
        self._headers = {**auth,
                         **(headers or {})}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    # -- clients ----------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.base_url + "/", "headers": self._headers,
                "timeout": self.timeout_s, "follow_redirects": False}

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**self._client_kwargs())
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._aclient is None or self._aloop is not loop:
                # a client is bound to the event loop that opened its connections
                self._aclient = httpx.AsyncClient(**self._client_kwargs())
                self._aloop = loop
            return self._aclient

    def close(self) -> None:
        """Close the sync client, and the async one if its event loop can still run."""
        with self._lock:
            client, self._client = self._client, None
            aclient, loop = self._aclient, self._aloop
            self._aclient = self._aloop = None
            if loop is None or loop.is_closed() or loop.is_running():
                aclient = None  # its loop is gone or busy: drop it, nothing can close it now
        if client is not None:
            client.close()
        if aclient is not None and loop is not None:
            loop.run_until_complete(aclient.aclose())

    async def aclose(self) -> None:
        with self._lock:
            aclient, self._aclient = self._aclient, None
            same_loop = self._aloop is asyncio.get_running_loop()
            self._aloop = None
        if aclient is not None and same_loop:
            await aclient.aclose()
        self.close()

    # -- request building and response parsing, shared by both paths -----------------------
    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        if self.api == "responses":
            return responses_body(request, request.model or self.model_name, self.extra_body,
                                  self.structured_output)
        # extra_body holds defaults: what the request sets itself wins over them
        body: dict[str, Any] = {**self.extra_body, "model": request.model or self.model_name,
                                "messages": request.messages}
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = request.stop
        if request.response_schema is not None and self.structured_output:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.response_schema, "strict": False}}
        return body

    def _refuses_format(self, outcome: httpx.Response | BackendError,
                        body: dict[str, Any]) -> bool:
        """Whether ``outcome`` is the server refusing ``response_format``: it is then taken
        out of ``body`` and left out of later requests (``text`` in the Responses API)."""
        key = "text" if self.api == "responses" else "response_format"
        if not (isinstance(outcome, httpx.Response) and outcome.status_code == 400
                and key in body):
            return False
        text = outcome.text.lower()
        if "response_format" not in text and "json_schema" not in text \
                and "text.format" not in text:
            return False
        body.pop(key)
        self.structured_output = False
        return True

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _error_message(self, response: httpx.Response, retries: int) -> str:
        try:
            data = response.json()
            detail = data["error"]["message"] if isinstance(data.get("error"), dict) \
                else data.get("error") or data.get("message") or data
        except (ValueError, AttributeError, KeyError, TypeError):
            detail = response.text
        detail = " ".join(str(detail).split())[:_ERROR_CHARS]
        tries = f" (after {retries} retries)" if retries else ""
        return self._scrub(f"{self._where}: HTTP {response.status_code}{tries} for model "
                           f"{self.model_name!r}: {detail}")

    def _parse(self, response: httpx.Response, request: CompletionRequest,
               started: float, retries: int = 0) -> Completion:
        """Turn a final response into a ``Completion``, or raise for an error status."""
        if response.status_code == 429:
            raise RateLimitError(self._error_message(response, retries), status_code=429)
        if response.status_code >= 400:
            raise BadResponseError(self._error_message(response, retries),
                                   status_code=response.status_code)
        try:
            data = response.json()
            if isinstance(data, dict) and data.get("error") and "choices" not in data:
                raise BadResponseError(self._error_message(response, retries),
                                       status_code=response.status_code)  # an error in a 200
            reply = read_responses(data) if self.api == "responses" else read_chat(data)
            text, input_tokens, output_tokens = reply.text, reply.input_tokens, \
                reply.output_tokens
        except (ValueError, LookupError, TypeError, AttributeError, ArithmeticError) as exc:
            raise BadResponseError(self._scrub(
                f"{self._where}: malformed response "
                f"(HTTP {response.status_code}): {type(exc).__name__}: {response.text[:100]!r}"
            ), status_code=response.status_code) from exc
        model = data.get("model")
        try:
            # Completion checks the usage (whole, non-negative, bounded: rlm.types), so a
            # server reporting negative, NaN, infinite or absurd counts raises here and is
            # never charged; ``usage.cost`` is read only from a preset that reports costs.
            completion = Completion(
                text=text,
                model=model if isinstance(model, str) and model else self.model_name,
                input_tokens=estimate_tokens(request.prompt_chars) if input_tokens is None
                else input_tokens,
                output_tokens=estimate_tokens(len(text)) if output_tokens is None
                else output_tokens,
                latency_s=time.monotonic() - started,
                cached_input_tokens=reply.cached_tokens,
            )
            cost = reported_cost(reply.usage) if self.preset.reports_cost else None
            return replace(completion, cost_usd=cost if cost is not None else self._cost(
                completion.input_tokens, completion.output_tokens,
                completion.cached_input_tokens))
        except BadResponseError as exc:
            raise BadResponseError(self._scrub(f"{self._where}: {exc}"),
                                   status_code=response.status_code) from exc

    def _cost(self, input_tokens: int, output_tokens: int, cached: int = 0) -> float | None:
        if self.price_per_mtok is None:
            return None
        return self.price_per_mtok.cost(input_tokens, output_tokens, cache_read_tokens=cached)

    # -- the two I/O paths ------------------------------------------------------------------
    def _settle(self, outcome: httpx.Response | BackendError, attempts: _Attempts,
                request: CompletionRequest, body: dict[str, Any]) -> Completion | float:
        """The ``Completion`` (or raise) when done, else the seconds to wait before retrying."""
        if self._refuses_format(outcome, body):
            return 0.0
        delay = attempts.delay(outcome)
        if delay is not None:
            return delay
        if isinstance(outcome, BackendError):
            raise outcome
        return self._parse(outcome, request, attempts.started, attempts.retries)

    def _failure(self, outcome: httpx.Response | BackendError, retries: int) -> BackendError:
        """The error an unanswered ``outcome`` stands for (raised if no retry is left)."""
        if isinstance(outcome, BackendError):
            return outcome
        message = self._error_message(outcome, retries)
        if outcome.status_code == 429:
            return RateLimitError(message, status_code=429)
        return BadResponseError(message, status_code=outcome.status_code)

    def _call_headers(self, attempts: _Attempts) -> dict[str, str] | None:
        return {"Idempotency-Key": attempts.idempotency_key} if self.idempotency else None

    def _post(self, client: httpx.Client, body: dict[str, Any],
              timeout: float, headers: dict[str, str] | None) -> httpx.Response | BackendError:
        try:
            with _translate_errors(self._where):
                return client.post(self._path, json=body, timeout=timeout, headers=headers)
        except BackendError as exc:
            return exc

    def _attempt(self, client: httpx.Client, body: dict[str, Any],
                 attempts: _Attempts) -> httpx.Response | BackendError:
        """One request.  With a cancel event it runs in a worker thread, so that a cancel
        ends the wait at once (a blocking ``httpx`` call cannot be interrupted); the
        abandoned request ends by itself, at the latest at its timeout."""
        timeout, headers = attempts.timeout(), self._call_headers(attempts)
        if attempts.cancel is None:
            return self._post(client, body, timeout, headers)
        done = threading.Event()
        box: list[Any] = []

        def work() -> None:
            try:
                box.append(self._post(client, body, timeout, headers))
            except BaseException as exc:  # handed to the caller (a closed client...)
                box.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, daemon=True, name="rlm-openai-request").start()
        while not done.wait(_CANCEL_POLL_S):
            if attempts.cancel.is_set():
                raise attempts.cancelled_in_flight()
        outcome = box[0]
        if isinstance(outcome, BaseException) and not isinstance(outcome, BackendError):
            raise outcome
        return outcome

    def _start(self, request: CompletionRequest) -> tuple[dict[str, Any], _Attempts]:
        return self._body(request), _Attempts(self, request, booked_tokens(request, None))

    def _done(self, completion: Completion, attempts: _Attempts) -> Completion:
        self.limiter.settle(attempts.booked, completion.total_tokens)
        return completion

    def complete(self, request: CompletionRequest) -> Completion:
        (body, attempts), last = self._start(request), None
        client = self._sync_client()
        while True:  # each try waits for its turn with the shared limiter first
            self.limiter.wait_turn(self.name, attempts.booked, attempts.deadline,
                                   attempts.cancel, last)
            outcome = self._attempt(client, body, attempts)
            if isinstance(outcome, BackendError) and attempts.stopped_by_tree(outcome):
                raise attempts.cancelled_in_flight() from outcome
            result = self._settle(outcome, attempts, request, body)
            if isinstance(result, Completion):
                return self._done(result, attempts)
            last = self._failure(outcome, attempts.retries)
            if attempts.cancel is None:
                time.sleep(result)
            elif attempts.cancel.wait(result):
                raise attempts.cancelled(outcome)

    async def _apost(self, client: httpx.AsyncClient, body: dict[str, Any], timeout: float,
                     headers: dict[str, str] | None) -> httpx.Response | BackendError:
        try:
            with _translate_errors(self._where):
                return await client.post(self._path, json=body, timeout=timeout,
                                         headers=headers)
        except BackendError as exc:
            return exc

    async def _aattempt(self, client: httpx.AsyncClient, body: dict[str, Any],
                        attempts: _Attempts) -> httpx.Response | BackendError:
        """One request; a cancel (``request.cancel``) cancels it in flight."""
        post = self._apost(client, body, attempts.timeout(), self._call_headers(attempts))
        if attempts.cancel is None:
            return await post
        task = asyncio.ensure_future(post)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_CANCEL_POLL_S)
                if not task.done() and attempts.cancel.is_set():
                    raise attempts.cancelled_in_flight()
            return task.result()
        finally:
            if not task.done():  # cancelled by the tree, or this coroutine was cancelled
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _astopped_by_tree(self, outcome: BackendError, attempts: _Attempts) -> bool:
        if attempts.cancel is None:
            return False
        if isinstance(outcome, BackendTimeoutError) and attempts.tree_deadline:
            end = time.monotonic() + _DEADLINE_GRACE_S
            while not attempts.cancel.is_set() and time.monotonic() < end:
                await asyncio.sleep(_CANCEL_POLL_S)
        return attempts.cancel.is_set()

    async def acomplete(self, request: CompletionRequest) -> Completion:
        (body, attempts), last = self._start(request), None
        client = self._async_client()
        while True:
            await self.limiter.await_turn(self.name, attempts.booked, attempts.deadline,
                                          attempts.cancel, last)
            outcome = await self._aattempt(client, body, attempts)
            if isinstance(outcome, BackendError) and await self._astopped_by_tree(outcome,
                                                                                 attempts):
                raise attempts.cancelled_in_flight() from outcome
            result = self._settle(outcome, attempts, request, body)
            if isinstance(result, Completion):
                return self._done(result, attempts)
            last = self._failure(outcome, attempts.retries)
            end = time.monotonic() + result
            while (left := end - time.monotonic()) > 0:  # sleep, watching the cancel event
                if attempts.cancel is not None and attempts.cancel.is_set():
                    raise attempts.cancelled(outcome)
                await asyncio.sleep(min(left, 0.05))

    # -- LMBackend extras -------------------------------------------------------------------
    def estimate_cost(self, request: CompletionRequest) -> float | None:
        output = request.max_output_tokens or 1024  # the reply's cap, when the call sets one
        return self._cost(estimate_tokens(request.prompt_chars), output)

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "base_url": self.base_url,
                "provider": self.provider}
