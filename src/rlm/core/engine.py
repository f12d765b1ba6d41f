"""Runs a call tree: builds the shared ledger, handler and tracer, drives each node's loop.

``Engine`` receives backend instances (through a ``ModelRouter``) and an environment
factory; it never names a concrete backend, environment or transport.

Every failure reaches the caller as an ``RLMError`` with the result so far in
``exc.partial``: environment operations (start, set_variable, execute, close) go through
``_env_call``, which turns anything but an ``RLMError`` (a ``ProcessLookupError`` of a dead
REPL, a ``SystemExit``, a ``TypeError`` of a malformed reply...) into an ``EnvError``
chained to it, and a block result of the wrong shape is an ``EnvError`` too.  Only
``KeyboardInterrupt`` and asyncio cancellation pass through as they are (after the run is
wound down); ``Engine.cancel()`` ends a run with ``stop_reason="cancelled"``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from rlm.bridge.guest import SETTINGS_NAME
from rlm.context import describe_context, load_context
from rlm.core import prompts
from rlm.core.handler import LMHandler
from rlm.core.limits import Budget, Limits
from rlm.core.loop import CallLM, Loop, LoopConfig, Outcome, RunCode, Step
from rlm.core.routing import ModelRouter
from rlm.environments.base import Environment
from rlm.errors import Cancelled, EnvError, LimitExceeded, RLMError
from rlm.result import RLMResult
from rlm.tools import Tool
from rlm.trace.preview import preview_fields
from rlm.trace.sinks import MemorySink, MultiSink, TraceSink
from rlm.trace.tracer import Tracer
from rlm.trace.tree import build_tree
from rlm.types import Answer, ExecResult, HostCall, Message, NodeRef

__all__ = ["Engine", "EngineConfig", "Session"]

EnvironmentFactory = Callable[[], Environment]


@dataclass(frozen=True)
class EngineConfig:
    """Everything about how a tree runs, apart from the limits."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    tools: dict[str, Tool] = field(default_factory=dict)
    system_prompt: str | None = None
    max_concurrency: int = 16
    sub_call_max_output_tokens: int | None = None
    chunk_chars: int = 50_000
    sub_calls: bool = True
    #: Under ``max_timeout``, a block may use this share of the time left (at least
    #: ``MIN_BLOCK_S``), so a runaway block leaves the model time to react.
    block_time_share: float = 0.5


#: The shortest time limit a block gets under ``max_timeout`` (unless less time is left).
MIN_BLOCK_S = 1.0


class Session:
    """REPL state kept across ``completion()`` calls (``RLM(persistent=True)``).

    The environment stays open; each call adds ``context_<n>`` and appends
    ``{"question", "answer"}`` to ``history``.  The REPL reaches the LM handler of the
    call under way through ``dispatch``.
    """

    def __init__(self, environment: Environment, owned: bool) -> None:
        self.environment = environment
        self.owned = owned
        self.turn = 0
        self.history: list[dict[str, str]] = []
        self._target: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.lock = threading.Lock()

    def dispatch(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._target is None:
            return {"error": {"type": "Cancelled", "message": "no completion is running"}}
        return self._target(message)

    def close(self) -> None:
        if self.owned:
            self.environment.close()


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


#: Exceptions that are not failures of the run: they pass through ``_env_call`` unchanged.
_PASS_THROUGH = (RLMError, KeyboardInterrupt, asyncio.CancelledError, GeneratorExit)


def _env_call(env: Environment, what: str, operation: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
    """Run one operation of ``env``; a non-rlm exception comes out as an ``EnvError``."""
    try:
        return operation(*args, **kwargs)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # a dead REPL, a bad frame, even SystemExit
        name = getattr(env, "name", type(env).__name__)
        raise EnvError(f"the {name} environment failed in {what}: "
                       f"{type(exc).__name__}: {exc}") from exc


def _checked(env: Environment, result: Any) -> ExecResult:
    """``result`` when it is a well-formed ``ExecResult``, else an ``EnvError``."""
    final = getattr(result, "final", None)
    if (isinstance(result, ExecResult) and isinstance(result.stdout, str)
            and isinstance(result.stderr, str) and isinstance(result.error, str | None)
            and (final is None or (isinstance(final, Answer) and isinstance(final.text, str)))
            and all(isinstance(note, str) for note in result.notes)
            and isinstance(result.elapsed_s, int | float)):
        return result
    name = getattr(env, "name", type(env).__name__)
    raise EnvError(f"the {name} environment returned a malformed block result: "
                   f"{result!r:.200}")


class _Tree:
    """The objects shared by every node of one call tree."""

    def __init__(self, engine: Engine, sink: TraceSink) -> None:
        self.engine = engine
        self.budget = Budget(engine.limits)
        self.memory = MemorySink()
        self.tracer = Tracer(MultiSink(self.memory, sink), secrets=engine.router.secrets())
        self.handler = LMHandler(
            engine.router, self.budget, self.tracer, spawn_child=self.spawn_child,
            max_concurrency=engine.config.max_concurrency,
            sub_call_max_output_tokens=engine.config.sub_call_max_output_tokens,
            sub_calls=engine.config.sub_calls,
            max_answer_chars=engine.config.loop.max_answer_chars,
        )
        #: Per open node, what removes its environment's ``interrupt`` from ``on_stop``.
        self._stops: dict[str, Callable[[], None]] = {}

    def release(self, node: NodeRef) -> None:
        """The node's environment no longer needs interrupting when the tree stops."""
        remove = self._stops.pop(node.run_id, None)
        if remove is not None:
            remove()

    def block_time_s(self) -> float | None:
        """The time limit of the next block: ``block_time_share`` of the time left."""
        left = self.budget.time_left_s()
        if left is None:
            return None
        return min(left, max(left * self.engine.config.block_time_share, MIN_BLOCK_S))

    # -- one node ---------------------------------------------------------------------------
    def open_node(self, node: NodeRef, question: str | None, context: Any,
                  env: Environment, call: HostCall, session: Session | None = None
                  ) -> list[Message]:
        """Start ``env`` for ``node``, load ``context`` and return the first messages."""
        cfg = self.engine.config
        _env_call(env, "start", env.start, call, cfg.tools)
        # A cancel or a limit stops the block under way, not only the next step.
        self._stops[node.run_id] = self.budget.on_stop(env.interrupt)
        _env_call(env, "set_variable", env.set_variable, SETTINGS_NAME,
                  {"max_answer_chars": cfg.loop.max_answer_chars})
        value = load_context(context)
        names: list[str] = []
        if session is not None:
            _env_call(env, "set_variable", env.set_variable, f"context_{session.turn}", value)
            _env_call(env, "set_variable", env.set_variable, "history",
                      list(session.history))
            names = [f"context_{i}" for i in range(session.turn + 1)]
        _env_call(env, "set_variable", env.set_variable, "context", value)
        self.tracer.emit(
            "run_start", node, **preview_fields(question=question),
            context_type=type(value).__name__,
            context_length=len(value) if hasattr(value, "__len__") else None,
            backend=self.engine.router.for_depth(node.depth).describe(),
            limits=vars(self.engine.limits), environment=type(env).__name__,
        )
        system = prompts.system_prompt(depth=node.depth, max_depth=self.engine.limits.max_depth,
                                       tools=cfg.tools, chunk_chars=cfg.chunk_chars,
                                       template=cfg.system_prompt,
                                       style=self.style(node), sub_calls=cfg.sub_calls)
        user = prompts.first_user_message(question, describe_context(value),
                                          session_turn=session.turn if session else 0,
                                          session_names=names)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def close_node(self, node: NodeRef, outcome: Outcome | None, error: BaseException | None,
                   started: float) -> None:
        data: dict[str, Any] = {"elapsed_s": time.monotonic() - started}
        if outcome is not None:
            self.tracer.emit("final", node, **preview_fields(response=outcome.response),
                             stop_reason=outcome.stop_reason, answer_source=outcome.answer_source)
            data["iterations"] = outcome.iterations
        if error is not None:
            data["error"] = {"type": type(error).__name__, "message": str(error)}
        self.tracer.emit("run_end", node, **data)

    def style(self, node: NodeRef) -> str:
        return self.engine.router.for_depth(node.depth).prompt_profile

    def loop(self, node: NodeRef, messages: list[Message]) -> Loop:
        config = replace(self.engine.config.loop, prompt_style=self.style(node))
        return Loop(node, self.budget, messages, config, self.tracer)

    def run_sync(self, node: NodeRef, messages: list[Message], env: Environment) -> Outcome:
        loop = self.loop(node, messages)
        steps = loop.steps()
        value: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                step = steps.throw(thrown) if thrown is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value
            value, thrown = None, None
            try:
                value = self._perform(step, node, env)
            except (LimitExceeded, Cancelled) as exc:
                thrown = exc

    def _perform(self, step: Step, node: NodeRef, env: Environment) -> Any:
        if isinstance(step, CallLM):
            return self.handler.complete(step.request, node, purpose=step.purpose)
        if self.budget.tripped is not None:  # stopped since the reply: do not start it
            reason = self.budget.tripped
            return ExecResult(error=f"{type(reason).__name__}: {reason}; the block was not run")
        return _checked(env, _env_call(env, "execute", env.execute, step.code,
                                       timeout_s=self.block_time_s()))

    async def run_async(self, node: NodeRef, messages: list[Message],
                        env: Environment) -> Outcome:
        loop = self.loop(node, messages)
        steps: Generator[Step, Any, Outcome] = loop.steps()
        value: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                step = steps.throw(thrown) if thrown is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value
            value, thrown = None, None
            try:
                if isinstance(step, CallLM):
                    value = await self.handler.acomplete(step.request, node,
                                                         purpose=step.purpose)
                elif isinstance(step, RunCode):
                    value = await asyncio.to_thread(self._perform, step, node, env)
            except (LimitExceeded, Cancelled) as exc:
                thrown = exc

    # -- children ---------------------------------------------------------------------------
    def spawn_child(self, prompt: str, context: Any, parent: NodeRef) -> str:
        """Run a child RLM one level below ``parent`` (called by ``rlm_query``)."""
        node = NodeRef(_new_id(), parent.run_id, parent.depth + 1)
        env = self.engine.environment_factory()
        started = time.monotonic()
        outcome = None
        try:
            messages = self.open_node(node, prompt, context, env,
                                      lambda message: self.handler.handle(message, node))
            outcome = self.run_sync(node, messages, env)
            return outcome.response
        except BaseException as exc:
            self.close_node(node, None, exc, started)
            raise
        finally:
            self.release(node)
            try:
                _env_call(env, "close", env.close)
            finally:
                if outcome is not None:
                    self.close_node(node, outcome, None, started)

    # -- the result -------------------------------------------------------------------------
    def result(self, root: NodeRef, outcome: Outcome, started: float,
               trace_path: str | None) -> RLMResult:
        roots = build_tree(self.memory.events)
        tree = next(r for r in roots if r.run_id == root.run_id)
        usage = self.budget.usage_snapshot()
        return RLMResult(
            response=outcome.response, stop_reason=outcome.stop_reason,  # type: ignore[arg-type]
            cost_usd=sum(u.cost_usd for u in usage.values()), usage=usage,
            iterations=outcome.iterations, elapsed_s=time.monotonic() - started, trace=tree,
            run_id=root.run_id, trace_path=trace_path, answer_source=outcome.answer_source,
        )


class Engine:
    """Runs completions for one configuration; safe to use from several threads at once."""

    def __init__(self, router: ModelRouter, environment_factory: EnvironmentFactory,
                 limits: Limits, config: EngineConfig | None = None) -> None:
        self.router = router
        self.environment_factory = environment_factory
        self.limits = limits
        self.config = config or EngineConfig()
        self._active: set[Budget] = set()
        self._active_lock = threading.Lock()

    def cancel(self) -> None:
        """Stop every completion under way: they return with ``stop_reason="cancelled"``."""
        with self._active_lock:
            for budget in self._active:
                budget.cancel()

    def _begin(self, sink: TraceSink, session: Session | None,
               root_environment: Environment | None
               ) -> tuple[_Tree, NodeRef, Environment, HostCall, bool]:
        tree = _Tree(self, sink)
        with self._active_lock:
            self._active.add(tree.budget)
        root = NodeRef(_new_id(), None, 0)
        if session is not None:
            session._target = lambda message: tree.handler.handle(message, root)
            return tree, root, session.environment, session.dispatch, False
        env = root_environment or self.environment_factory()
        return (tree, root, env, lambda message: tree.handler.handle(message, root),
                root_environment is None)

    def _finish(self, tree: _Tree, root: NodeRef, env: Environment, session: Session | None,
                owned: bool, outcome: Outcome | None, error: BaseException | None,
                started: float, trace_path: str | None, question: str | None
                ) -> RLMResult | None:
        """Wind the run down whatever happened; return its result (None when it raised).

        A failure while winding down (closing the environment, updating the session's
        ``history``) after a run that ended well raises an ``EnvError`` whose ``partial``
        is the whole result; after a run that raised, the first error is kept.
        """
        with self._active_lock:
            self._active.discard(tree.budget)
        tree.budget.close()
        tree.release(root)
        # Whatever is still running belongs to a finished run (a thread model code left, a
        # batch slot): later LM calls fail, and in-flight ones get a moment to wind down.
        tree.budget.trip(Cancelled("the run has ended"))
        late: RLMError | None = None
        # Each step runs even when an earlier one is cut short (a second Ctrl-C): the
        # environment is removed and the trace gets its run_end.
        try:
            tree.handler.drain(timeout_s=5.0)
        finally:
            try:
                if session is not None:
                    session._target = None
                elif owned:
                    try:
                        _env_call(env, "close", env.close)
                    except RLMError as exc:
                        late = exc
            finally:
                tree.close_node(root, outcome, error or late, started)
        if outcome is None:
            if isinstance(error, RLMError):
                self._attach_partial(error, tree, root, started, trace_path)
            return None
        if session is not None:
            session.history.append({"question": question or "", "answer": outcome.response})
            session.turn += 1
            try:
                _env_call(env, "set_variable", env.set_variable, "history",
                          list(session.history))
            except RLMError as exc:
                late = late or exc
        result = tree.result(root, outcome, started, trace_path)
        if late is not None:
            late.run_id = late.run_id or root.run_id
            late.partial = result
            raise late
        return result

    def run(self, question: str | None, context: Any, *, sink: TraceSink,
            session: Session | None = None, trace_path: str | None = None,
            root_environment: Environment | None = None) -> RLMResult:
        """Run one call tree to its end and return its result.

        Limits end the run with a matching ``stop_reason``; a failure of the backend or the
        environment raises, with the result so far in ``exc.partial``.
        """
        started = time.monotonic()
        tree, root, env, call, owned = self._begin(sink, session, root_environment)
        outcome: Outcome | None = None
        error: BaseException | None = None
        try:
            messages = tree.open_node(root, question, context, env, call, session)
            outcome = tree.run_sync(root, messages, env)
        except BaseException as exc:
            error = exc
            raise
        finally:
            result = self._finish(tree, root, env, session, owned, outcome, error, started,
                                  trace_path, question)
        assert result is not None
        return result

    async def arun(self, question: str | None, context: Any, *, sink: TraceSink,
                   session: Session | None = None, trace_path: str | None = None,
                   root_environment: Environment | None = None) -> RLMResult:
        """The async twin of ``run``; cancelling the task cancels the whole tree."""
        started = time.monotonic()
        tree, root, env, call, owned = self._begin(sink, session, root_environment)
        outcome: Outcome | None = None
        error: BaseException | None = None
        try:
            messages = await asyncio.to_thread(tree.open_node, root, question, context, env,
                                               call, session)
            outcome = await tree.run_async(root, messages, env)
        except BaseException as exc:
            error = exc
            tree.budget.cancel()
            raise
        finally:
            result = await asyncio.to_thread(self._finish, tree, root, env, session, owned,
                                             outcome, error, started, trace_path, question)
        assert result is not None
        return result

    @staticmethod
    def _attach_partial(exc: BaseException, tree: _Tree, root: NodeRef, started: float,
                        trace_path: str | None) -> None:
        if not isinstance(exc, RLMError):
            return
        exc.run_id = exc.run_id or root.run_id
        prose = ""
        for event in reversed(tree.memory.events):
            if event.type == "lm_call" and event.run_id == root.run_id and event.data.get(
                    "response"):
                prose = event.data["response"]
                break
        outcome = Outcome(prose, "error", root.iteration, None)
        exc.partial = tree.result(root, outcome, started, trace_path)
