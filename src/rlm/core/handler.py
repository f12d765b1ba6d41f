"""The LM handler: the one place that runs LM calls for a call tree and charges the Budget.

It serves two kinds of callers: the loop's own turns (``complete`` / ``acomplete``) and the
requests REPL code makes (``handle``: ``llm_query``, ``rlm_query``, their batched forms,
``budget``).  It knows nothing of sockets: transports (``rlm.bridge``) decode a message,
call ``handle`` and send the reply back, so every environment shares this code.

Text handed back to REPL code is bounded: an ``llm_query`` reply or an ``rlm_query``
answer longer than ``max_answer_chars`` is cut to its head with a marker saying how much
was dropped (``cap_answer``), per slot in the batched forms.  ``lm_call`` trace events keep
a bounded preview of long prompts and responses (``rlm.trace.preview``).
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
from rlm.bridge.protocol import error_body, error_reply
from rlm.core.limits import Budget
from rlm.core.routing import ModelRouter
from rlm.errors import BackendError, BridgeProtocolError, Cancelled, LimitExceeded, RLMError
from rlm.trace.preview import preview_fields
from rlm.trace.tracer import Tracer
from rlm.types import Completion, CompletionRequest, NodeRef

__all__ = ["LMHandler", "SpawnChild", "cap_answer"]

SpawnChild = Callable[[str, Any, NodeRef], str]
"""Runs a child RLM for ``rlm_query(prompt, context)`` from ``parent``; returns its answer."""


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


class LMHandler:
    """Runs LM calls for one call tree; thread-safe and shared by every node of the tree.

    ``max_concurrency`` bounds the worker threads of one batched request;
    ``max_answer_chars`` bounds each text a REPL request gets back (``None``: unbounded).
    """

    def __init__(
        self,
        router: ModelRouter,
        budget: Budget,
        tracer: Tracer,
        *,
        spawn_child: SpawnChild | None = None,
        max_concurrency: int = 16,
        sub_call_max_output_tokens: int | None = None,
        sub_calls: bool = True,
        max_answer_chars: int | None = None,
    ) -> None:
        self.router = router
        self.budget = budget
        self.tracer = tracer
        self.spawn_child = spawn_child
        self.max_concurrency = max(1, max_concurrency)
        self.sub_call_max_output_tokens = sub_call_max_output_tokens
        self.sub_calls = sub_calls
        self.max_answer_chars = max_answer_chars
        self._in_flight: set[cf.Future[str]] = set()
        self._in_flight_lock = threading.Lock()

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for batch slots still running after their batch returned."""
        with self._in_flight_lock:
            futures = set(self._in_flight)
        if futures:
            cf.wait(futures, timeout=timeout_s)

    # -- charged LM calls -------------------------------------------------------------------
    def _prepare(self, request: CompletionRequest, node: NodeRef, purpose: str,
                 backend: LMBackend | None) -> _Call:
        """Check the limits and reserve the call's estimate (released or committed later)."""
        backend = backend or self.router.for_depth(request.depth)
        self.budget.check()
        left = self.budget.time_left_s()
        timeout = request.timeout_s if left is None else min(left, request.timeout_s or left)
        # The request the backend gets is the one estimated: its prompt is measured once.
        request = replace(request, timeout_s=timeout, cancel=self.budget.cancel_event)
        reservation = self.budget.reserve(
            backend.estimate_cost(request), backend.estimate_tokens(request)
        )
        return _Call(backend, request, reservation, node, purpose, time.monotonic())

    def _charged(self, call: _Call, completion: Completion) -> Completion:
        self.budget.commit(call.reservation, completion, call.backend.model_name)
        self._record(call, completion, None)
        return completion

    def _failed(self, call: _Call, exc: BaseException) -> NoReturn:
        self.budget.release(call.reservation)
        self._record(call, None, exc)
        _reraise(exc, call.backend)

    def _record(self, call: _Call, completion: Completion | None,
                error: BaseException | None) -> None:
        backend, request = call.backend, call.request
        data: dict[str, Any] = {
            "purpose": call.purpose,
            "backend": backend.name,
            "model": backend.model_name,
            "usage_key": backend.model_name,
            "call_depth": request.depth,
            "latency_s": time.monotonic() - call.started,
        }
        # A turn's prompt is the node's history: its parts are already in the trace (the
        # replies here, the outputs in code_exec), so it is not repeated on every call.
        if call.purpose != "turn":
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
        self.tracer.emit("lm_call", call.node, **data)

    def complete(self, request: CompletionRequest, node: NodeRef, *, purpose: str = "turn",
                 backend: LMBackend | None = None) -> Completion:
        """Run one LM call for ``node``: check limits, reserve, call, charge, trace."""
        call = self._prepare(request, node, purpose, backend)
        try:
            completion = call.backend.complete(call.request)
        except BaseException as exc:
            self._failed(call, exc)
        return self._charged(call, completion)

    async def acomplete(self, request: CompletionRequest, node: NodeRef, *,
                        purpose: str = "turn", backend: LMBackend | None = None) -> Completion:
        """The async twin of ``complete``."""
        call = self._prepare(request, node, purpose, backend)
        try:
            completion = await call.backend.acomplete(call.request)
        except BaseException as exc:
            self._failed(call, exc)
        return self._charged(call, completion)

    # -- requests from REPL code ------------------------------------------------------------
    def handle(self, message: dict[str, Any], node: NodeRef) -> dict[str, Any]:
        """Answer one REPL request; errors come back as ``{"error": {type, message}}``."""
        op = message.get("op")
        if not self.sub_calls and op != "budget":
            return error_reply("SubCallsDisabled",
                               "sub-model calls are disabled in this run (sub_calls=False)")
        try:
            if op == "llm_query":
                return {"text": self._llm_query(message.get("prompt", ""),
                                                message.get("model"), node)}
            if op == "rlm_query":
                return {"text": self._rlm_query(message.get("prompt", ""),
                                                message.get("context"), node)}
            if op == "llm_query_batched":
                prompts = list(message.get("prompts") or [])
                model = message.get("model")
                return {"results": self._batch(
                    op, node, [(lambda p=p: self._llm_query(p, model, node)) for p in prompts]
                )}
            if op == "rlm_query_batched":
                prompts = list(message.get("prompts") or [])
                contexts = message.get("contexts")
                contexts = [None] * len(prompts) if contexts is None else list(contexts)
                if len(contexts) != len(prompts):
                    raise BridgeProtocolError("prompts and contexts differ in length")
                return {"results": self._batch(op, node, [
                    (lambda p=p, c=c: self._rlm_query(p, c, node))
                    for p, c in zip(prompts, contexts, strict=True)
                ])}
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

    def _llm_query(self, prompt: str, model: str | None, node: NodeRef) -> str:
        backend = self.router.named(model) if model else None
        request = CompletionRequest(
            messages=[{"role": "user", "content": str(prompt)}],
            depth=node.depth + 1,
            max_output_tokens=self.sub_call_max_output_tokens,
        )
        text = self.complete(request, node, purpose="llm_query", backend=backend).text
        return cap_answer(text, self.max_answer_chars)

    def _rlm_query(self, prompt: str, context: Any, node: NodeRef) -> str:
        if self.spawn_child is not None and node.depth + 1 < self.budget.limits.max_depth:
            self.budget.check()
            return cap_answer(self.spawn_child(prompt, context, node), self.max_answer_chars)
        # At max depth a child RLM is not allowed: answer with one plain LM call.
        text = prompt if context is None else f"{prompt}\n\n--- context ---\n{context}"
        request = CompletionRequest(messages=[{"role": "user", "content": text}],
                                    depth=node.depth + 1,
                                    max_output_tokens=self.sub_call_max_output_tokens)
        text = self.complete(request, node, purpose="rlm_query_fallback").text
        return cap_answer(text, self.max_answer_chars)

    def _batch(self, op: str, node: NodeRef, jobs: list[Callable[[], str]]
               ) -> list[dict[str, Any]]:
        """Run ``jobs`` concurrently, in order; one failure never fails the other slots.

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
                        results[futures[future]] = self._slot(future)
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

    def _forget(self, future: cf.Future[str]) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(future)

    def _slot(self, future: cf.Future[str]) -> dict[str, Any]:
        try:
            return {"text": future.result()}
        except (RLMError, LimitExceeded, ValueError, TypeError) as exc:
            return error_reply(self._limit_reason(exc))
        except Exception as exc:
            return error_reply(exc)
