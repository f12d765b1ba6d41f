"""The LM handler: the one place that runs LM calls for a call tree and charges the Budget.

It serves two kinds of callers: the loop's own turns (``complete`` / ``acomplete``) and the
requests REPL code makes (``handle``: ``llm_query``, ``rlm_query``, their batched forms,
``budget``).  It knows nothing of sockets: transports (``rlm.bridge``) decode a message,
call ``handle`` and send the reply back, so every environment shares this code.

Text handed back to REPL code is bounded: an ``llm_query`` reply or an ``rlm_query``
answer longer than ``max_answer_chars`` is cut to its head with a marker saying how much
was dropped (``cap_answer``), per slot in the batched forms.

A typed request (``"schema"``: a JSON Schema, ``rlm.bridge.schema``) is answered with
``value`` instead of ``text``: the backend gets the schema as ``response_schema`` (to
enforce it where it can) and the prompt a line saying the format; every reply is parsed and
validated here, a reply that does not match gets ONE repair call (the bad reply and what
was wrong), and one that still does not match fails with a ``SchemaError``.  A typed
``rlm_query`` tells the child the format (it checks its own answers) and checks the child's
answer the same way, its repair being a plain LM call.  ``lm_call`` trace events keep
a bounded preview of long prompts and responses (``rlm.trace.preview``); a turn's, the
messages its node's conversation gained since its previous turn (``rlm.trace.export``).

With a ``cache`` (``rlm.trace.cache``), a call whose reply is stored is served from it:
no reservation, $0 and 0 tokens under the usage key ``cache:<model>``, and an ``lm_call``
event with ``cached: true``; a reply it makes is stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from rlm.backends.base import LMBackend
from rlm.bridge import schema as schemas
from rlm.bridge.protocol import error_body, error_reply
from rlm.bridge.schema import SchemaError
from rlm.core.limits import Ledger
from rlm.core.routing import ModelRouter
from rlm.errors import BackendError, BridgeProtocolError, Cancelled, LimitExceeded, RLMError
from rlm.trace.cache import CachedReply, LMCache, RunCache, saved_fields
from rlm.trace.export import TurnLog
from rlm.trace.preview import preview_fields
from rlm.trace.tracer import Tracer
from rlm.types import Completion, CompletionRequest, Message, NodeRef

__all__ = ["LMHandler", "SpawnChild", "cap_answer"]

SpawnChild = Callable[..., str]
"""Runs a child RLM for ``rlm_query(prompt, context)`` from ``parent``, ``(prompt, context,
parent)``, and ``schema`` (a JSON Schema) as a fourth argument for a typed one; returns its
answer."""


def _reraise(exc: BaseException, backend: LMBackend) -> NoReturn:
    """Raise ``exc`` again; an ``Exception`` outside the rlm tree (a backend's bug, a
    malformed completion) as a ``BackendError`` chained to it."""
    if isinstance(exc, RLMError) or not isinstance(exc, Exception):
        raise exc
    raise BackendError(f"{backend.name}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Call:
    """One charged LM call under way: what settles it (commit or release) needs."""

    backend: LMBackend
    request: CompletionRequest
    reservation: Any
    node: NodeRef
    purpose: str
    started: float


def cap_answer(text: str, limit: int | None) -> str:
    """``text``, or its first ``limit`` characters and a marker when it is longer."""
    if limit is None or len(text) <= limit:
        return text
    return (f"{text[:limit]}\n... [answer truncated: {len(text) - limit:,} of {len(text):,} "
            f"characters dropped (max_answer_chars={limit:,})]")


def _has_pattern(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "pattern" in schema or any(_has_pattern(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_pattern(v) for v in schema)
    return False


class LMHandler:
    """Runs LM calls for one call tree; thread-safe and shared by every node of the tree.

    ``max_concurrency`` bounds the worker threads of one batched request;
    ``max_answer_chars`` bounds each text a REPL request gets back (``None``: unbounded).
    """

    def __init__(
        self,
        router: ModelRouter,
        budget: Ledger,
        tracer: Tracer,
        *,
        spawn_child: SpawnChild | None = None,
        max_concurrency: int = 16,
        sub_call_max_output_tokens: int | None = None,
        sub_calls: bool = True,
        max_answer_chars: int | None = None,
        cache: LMCache | None = None,
    ) -> None:
        self.router = router
        self.budget = budget
        self.tracer = tracer
        self.spawn_child = spawn_child
        self.max_concurrency = max(1, max_concurrency)
        self.sub_call_max_output_tokens = sub_call_max_output_tokens
        self.sub_calls = sub_calls
        self.max_answer_chars = max_answer_chars
        self.cache = None if cache is None else RunCache(cache)
        self.turns = TurnLog()  # each turn's trace event holds the messages new to it
        self._in_flight: set[cf.Future[Any]] = set()
        self._in_flight_lock = threading.Lock()

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for batch slots still running after their batch returned."""
        with self._in_flight_lock:
            futures = set(self._in_flight)
        if futures:
            cf.wait(futures, timeout=timeout_s)

    # -- charged LM calls -------------------------------------------------------------------
    def _prepare(self, request: CompletionRequest, node: NodeRef, purpose: str,
                 backend: LMBackend | None, *, wait: bool = True) -> _Call:
        """Check the limits and reserve the call's estimate (released or committed later).

        With ``wait`` (every caller but the async path, which must not block its event
        loop), a call that only lacks room held by calls in flight waits for their refunds.
        """
        backend = backend or self.router.for_depth(request.depth)
        self.budget.check()
        left = self.budget.time_left_s()
        timeout = request.timeout_s if left is None else min(left, request.timeout_s or left)
        request = replace(request, timeout_s=timeout, cancel=self.budget.cancel_event)
        priced = [request]

        def estimate() -> float | None:  # asked again after each wait for room
            priced[0] = self._priced(backend, request)
            return backend.estimate_cost(priced[0])

        reservation = self.budget.reserve(estimate, backend.estimate_tokens(request), wait=wait)
        if self.budget.limits.max_budget is not None:
            request = priced[0]  # the reply is capped at what was reserved: no overspend
        return _Call(backend, request, reservation, node, purpose, time.monotonic())

    def _priced(self, backend: LMBackend, request: CompletionRequest) -> CompletionRequest:
        """``request`` with the reply length it is priced at: its own ``max_output_tokens``,
        else what the run's replies suggest (``Budget.output_allowance``).  Under a
        ``max_budget`` the backend gets this request, so no reply costs more than its
        reservation."""
        if request.max_output_tokens is not None:
            return request
        return replace(request, max_output_tokens=self.budget.output_allowance(
            backend.model_name))

    def _charged(self, call: _Call, completion: Completion) -> Completion:
        self.budget.commit(call.reservation, completion, call.backend.model_name)
        self._record(call, completion, None)
        return completion

    def _failed(self, call: _Call, exc: BaseException) -> NoReturn:
        self.budget.release(call.reservation)
        self._record(call, None, exc)
        _reraise(exc, call.backend)

    def _record(self, call: _Call, completion: Completion | None,
                error: BaseException | None, hit: CachedReply | None = None) -> None:
        backend, request = call.backend, call.request
        data: dict[str, Any] = {
            "purpose": call.purpose,
            "backend": backend.name,
            "model": backend.model_name,
            "usage_key": backend.model_name if hit is None else f"cache:{backend.model_name}",
            "call_depth": request.depth,
            "latency_s": time.monotonic() - call.started,
        }
        # A turn's prompt is the node's history: each turn records only the messages new
        # since the node's previous turn (``TurnLog``), so nothing is written twice.
        if call.purpose == "turn":
            data.update(self.turns.fields(call.node.run_id, request.messages,
                                          None if completion is None else completion.text))
        else:
            data.update(preview_fields(
                prompt=request.messages[-1]["content"] if request.messages else ""))
        if completion is not None:
            data.update(preview_fields(response=completion.text))
            data.update(input_tokens=completion.input_tokens,
                        output_tokens=completion.output_tokens, cost_usd=completion.cost_usd,
                        cached_input_tokens=completion.cached_input_tokens)
        if error is not None:
            data["error"] = error_body(error)
            data.update(input_tokens=0, output_tokens=0, cost_usd=0.0)
        if hit is not None:
            data.update(saved_fields(hit))
        self.tracer.emit("lm_call", call.node, **data)

    def _cached(self, request: CompletionRequest, node: NodeRef, purpose: str,
                backend: LMBackend) -> tuple[str | None, Completion | None]:
        """The call's cache key (``None``: not cached) and its stored reply, charged as a
        hit (0 tokens, $0), if the cache holds one."""
        if self.cache is None:
            return None, None
        key = self.cache.key(backend.name, backend.model_name, request, purpose)
        hit = None if key is None else self.cache.get(key)
        if hit is None:
            return key, None
        started = time.monotonic()
        completion = Completion(text=hit.text, model=hit.model, cost_usd=0.0)
        reservation = self.budget.reserve(0.0, 0)  # checks that the tree is not stopping
        self.budget.commit(reservation, completion, f"cache:{backend.model_name}")
        self._record(_Call(backend, request, reservation, node, purpose, started),
                     completion, None, hit)
        return key, completion

    def _stored(self, key: str | None, asked: CompletionRequest, call: _Call,
                completion: Completion) -> Completion:
        if key is not None and self.cache is not None:
            self.cache.put(key, asked, call.request, completion)
        return completion

    def complete(self, request: CompletionRequest, node: NodeRef, *, purpose: str = "turn",
                 backend: LMBackend | None = None) -> Completion:
        """Run one LM call for ``node``: check limits, reserve, call, charge, trace (or
        serve it from the cache)."""
        backend = backend or self.router.for_depth(request.depth)
        key, hit = self._cached(request, node, purpose, backend)
        if hit is not None:
            return hit
        call = self._prepare(request, node, purpose, backend)
        try:
            completion = call.backend.complete(call.request)
        except BaseException as exc:
            self._failed(call, exc)
        return self._stored(key, request, call, self._charged(call, completion))

    async def acomplete(self, request: CompletionRequest, node: NodeRef, *,
                        purpose: str = "turn", backend: LMBackend | None = None) -> Completion:
        """The async twin of ``complete`` (a call that does not fit is refused at once)."""
        backend = backend or self.router.for_depth(request.depth)
        key, hit = self._cached(request, node, purpose, backend)
        if hit is not None:
            return hit
        call = self._prepare(request, node, purpose, backend, wait=False)
        try:
            completion = await call.backend.acomplete(call.request)
        except BaseException as exc:
            self._failed(call, exc)
        return self._stored(key, request, call, self._charged(call, completion))

    # -- requests from REPL code ------------------------------------------------------------
    def handle(self, message: dict[str, Any], node: NodeRef) -> dict[str, Any]:
        """Answer one REPL request; errors come back as ``{"error": {type, message}}``."""
        op = message.get("op")
        if not self.sub_calls and op != "budget":
            return error_reply("SubCallsDisabled",
                               "sub-model calls are disabled in this run (sub_calls=False)")
        try:
            schema = self._schema(message)
            key = "text" if schema is None else "value"
            if op == "llm_query":
                return {key: self._llm_query(message.get("prompt", ""), message.get("model"),
                                             node, schema)}
            if op == "rlm_query":
                return {key: self._rlm_query(message.get("prompt", ""),
                                             message.get("context"), node, schema)}
            if op == "llm_query_batched":
                prompts = list(message.get("prompts") or [])
                model = message.get("model")
                return {"results": self._batch(op, node, [
                    (lambda p=p: self._llm_query(p, model, node, schema)) for p in prompts
                ], key)}
            if op == "rlm_query_batched":
                prompts = list(message.get("prompts") or [])
                contexts = message.get("contexts")
                contexts = [None] * len(prompts) if contexts is None else list(contexts)
                if len(contexts) != len(prompts):
                    raise BridgeProtocolError("prompts and contexts differ in length")
                return {"results": self._batch(op, node, [
                    (lambda p=p, c=c: self._rlm_query(p, c, node, schema))
                    for p, c in zip(prompts, contexts, strict=True)
                ], key)}
            if op == "budget":
                return {"remaining": self.budget.remaining(node.depth)}
            raise BridgeProtocolError(f"unknown request op {op!r}")
        except Exception as exc:  # a request, even a malformed one, gets an error reply
            return error_reply(self._limit_reason(exc))

    def _limit_reason(self, exc: BaseException) -> BaseException:
        """A call aborted because the tree was stopping reports why the tree stopped."""
        if isinstance(exc, Cancelled) and self.budget.tripped is not None:
            return self.budget.tripped
        return exc

    @staticmethod
    def _schema(message: dict[str, Any]) -> dict[str, Any] | None:
        """The request's JSON Schema (checked: a REPL may send anything), if it has one."""
        schema = message.get("schema")
        if schema is None:
            return None
        if not isinstance(schema, dict):
            raise BridgeProtocolError("a request's schema must be a JSON Schema object")
        checked = schemas.to_json_schema(schema)
        if _has_pattern(checked):
            # A model-written regular expression would run on the host (and could take
            # forever to match): patterns come only from the host's own schemas.
            raise BridgeProtocolError("'pattern' is not supported in a sub-call's schema")
        return checked

    def _llm_query(self, prompt: str, model: str | None, node: NodeRef,
                   schema: dict[str, Any] | None = None, purpose: str = "llm_query") -> Any:
        backend = self.router.named(model) if model else None
        text = str(prompt)
        if schema is not None and schemas.format_instruction(schema) not in text:
            text += "\n\n" + schemas.format_instruction(schema)
        messages: list[Message] = [{"role": "user", "content": text}]
        reply = self._ask(messages, node, purpose, backend, schema)
        if schema is None:
            return cap_answer(reply, self.max_answer_chars)
        return self._checked(messages, reply, schema, node, purpose, backend)

    def _ask(self, messages: list[Message], node: NodeRef, purpose: str,
             backend: LMBackend | None, schema: dict[str, Any] | None) -> str:
        request = CompletionRequest(messages=messages, depth=node.depth + 1,
                                    max_output_tokens=self.sub_call_max_output_tokens,
                                    response_schema=schema)
        return self.complete(request, node, purpose=purpose, backend=backend).text

    def _checked(self, messages: list[Message], reply: str, schema: dict[str, Any],
                 node: NodeRef, purpose: str, backend: LMBackend | None) -> Any:
        """The value of ``reply`` under ``schema``, after one repair call if needed."""
        try:
            return self._value(reply, schema)
        except SchemaError as error:
            repair: list[Message] = [*messages, {"role": "assistant", "content": reply},
                                     {"role": "user",
                                      "content": schemas.repair_prompt(error, schema)}]
        again = self._ask(repair, node, f"{purpose}_repair", backend, schema)
        try:
            return self._value(again, schema)
        except SchemaError as exc:
            raise SchemaError(f"the reply does not match the schema, even after a repair "
                              f"call: {exc}") from None

    def _value(self, reply: str, schema: dict[str, Any]) -> Any:
        limit = self.max_answer_chars
        if limit is not None and len(reply) > limit:
            raise SchemaError(f"the reply has {len(reply):,} characters, more than "
                              f"max_answer_chars={limit:,}")
        return schemas.parse_reply(reply, schema)

    def _rlm_query(self, prompt: str, context: Any, node: NodeRef,
                   schema: dict[str, Any] | None = None) -> Any:
        if self.spawn_child is not None and node.depth + 1 < self.budget.limits.max_depth:
            self.budget.check()
            if schema is None:
                return cap_answer(self.spawn_child(prompt, context, node), self.max_answer_chars)
            answer = self.spawn_child(prompt, context, node, schema)
            messages: list[Message] = [
                {"role": "user", "content": f"{prompt}\n\n{schemas.format_instruction(schema)}"}]
            return self._checked(messages, answer, schema, node, "rlm_query", None)
        # At max depth a child RLM is not allowed: answer with one plain LM call.
        text = prompt if context is None else f"{prompt}\n\n--- context ---\n{context}"
        return self._llm_query(text, None, node, schema, purpose="rlm_query_fallback")

    def _batch(self, op: str, node: NodeRef, jobs: list[Callable[[], Any]], key: str = "text"
               ) -> list[dict[str, Any]]:
        """Run ``jobs`` concurrently, in order; one failure never fails the other slots
        (each result goes under ``key``: ``text``, or ``value`` for a typed batch).

        When the tree stops (a limit or a cancel), slots not finished get the reason as
        their error and the batch returns at once instead of waiting for them.
        """
        started = time.monotonic()
        self.tracer.emit("subcall_start", node, op=op, count=len(jobs))
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        if jobs:
            pool = cf.ThreadPoolExecutor(max_workers=min(len(jobs), self.max_concurrency),
                                         thread_name_prefix="rlm-batch")
            futures = {
                pool.submit(contextvars.copy_context().run, job): index
                for index, job in enumerate(jobs)
            }
            with self._in_flight_lock:
                self._in_flight.update(futures)
            for future in futures:
                future.add_done_callback(self._forget)
            pending = set(futures)
            try:
                while pending:
                    done, pending = cf.wait(pending, timeout=0.05,
                                            return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        results[futures[future]] = self._slot(future, key)
                    if pending and self.budget.cancel_event.is_set():
                        break
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
            reason = self.budget.tripped or Cancelled("the batch was cancelled")
            for future in pending:
                results[futures[future]] = error_reply(reason)
        failed = sum(1 for r in results if r and "error" in r)
        self.tracer.emit("subcall_end", node, op=op, count=len(jobs), failed=failed,
                         elapsed_s=time.monotonic() - started)
        return [r or error_reply(Cancelled("not run")) for r in results]

    def _forget(self, future: cf.Future[Any]) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(future)

    def _slot(self, future: cf.Future[Any], key: str) -> dict[str, Any]:
        try:
            return {key: future.result()}
        except (RLMError, LimitExceeded, ValueError, TypeError) as exc:
            return error_reply(self._limit_reason(exc))
        except Exception as exc:
            return error_reply(exc)
