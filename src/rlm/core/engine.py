"""Runs call trees: ``Engine`` starts one ``Run`` per completion and drives its nodes' loops.

``Engine`` receives backend instances (through a ``ModelRouter``) and an environment
factory; it never names a concrete backend, environment or transport.  A ``Run`` owns what
one completion needs: the shared ledger (``Budget``), the tracer, the LM handler, the root
node, its environment and session, and the clock.  It is a context manager (sync and
async), and leaving it winds the run down whatever happened.

Every failure reaches the caller as an ``RLMError`` with the result so far in
``exc.partial``: environment operations (start, set_variable, execute, close) go through
``env_call``, which turns anything but an ``RLMError`` (a ``ProcessLookupError`` of a dead
REPL, a ``SystemExit``, a ``TypeError`` of a malformed reply...) into an ``EnvError``
chained to it, and a block result of the wrong shape is an ``EnvError`` too.  Only
``KeyboardInterrupt`` and asyncio cancellation pass through as they are (after the run is
wound down); ``Engine.cancel()`` ends a run with ``stop_reason="cancelled"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol

from rlm.bridge import schema as schemas
from rlm.bridge.guest import SETTINGS_NAME
from rlm.context import describe_context, load_context
from rlm.core import prompts
from rlm.core.handler import LMHandler
from rlm.core.limits import Budget, Ledger, Limits
from rlm.core.loop import CallLM, Loop, LoopConfig, Outcome, RunCode, Step
from rlm.core.routing import ModelRouter
from rlm.core.session import Session, checked_result, env_call
from rlm.core.strategy import Plan, plan
from rlm.environments.base import Environment
from rlm.errors import Cancelled, LimitExceeded, RLMError
from rlm.result import RLMResult
from rlm.tools import Tool
from rlm.trace.cache import LMCache
from rlm.trace.preview import preview_fields
from rlm.trace.sinks import MemorySink, MultiSink, TraceSink
from rlm.trace.tracer import Tracer
from rlm.trace.tree import build_tree
from rlm.types import ExecResult, HostCall, Message, NodeRef

__all__ = ["MIN_BLOCK_S", "ChildRunner", "Engine", "Run", "Session"]

EnvironmentFactory = Callable[[], Environment]

#: The shortest time limit a block gets under ``max_timeout`` (unless less time is left).
MIN_BLOCK_S = 1.0


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


class _Stepper:
    """Advances one node's loop generator: the one step dispatcher of both drivers.

    ``next()`` hands out the next step (``None`` once the loop returned its ``outcome``);
    the driver performs it inside ``performing()``, which sends the step's result back, or
    throws in the limit or cancellation the step ran into.
    """

    def __init__(self, steps: Generator[Step, Any, Outcome]) -> None:
        self._steps = steps
        self._value: Any = None
        self._thrown: BaseException | None = None
        self.outcome: Outcome | None = None

    def next(self) -> Step | None:
        value, thrown, self._value, self._thrown = self._value, self._thrown, None, None
        try:
            return self._steps.throw(thrown) if thrown is not None else self._steps.send(value)
        except StopIteration as stop:
            self.outcome = stop.value
            return None

    @contextlib.contextmanager
    def performing(self) -> Iterator[Callable[[Any], None]]:
        try:
            yield self._send
        except (LimitExceeded, Cancelled) as exc:
            self._thrown = exc

    def _send(self, value: Any) -> None:
        self._value = value


class Run:
    """One completion: its call tree's shared objects, the root node and its environment.

    Built by ``Engine.open``; ``with run:`` (or ``async with``) drives nothing by itself:
    ``run.drive_sync(context)`` / ``await run.drive_async(context)`` run the root, and
    leaving the block winds down (``_finish``) and sets ``run.result``.  ``schema``: the
    JSON Schema the root's answer is told, checked against and parsed by (``output``).
    ``budget``: the ledger to spend from (a batch's ``Budget(parent=...)``, or a cluster's
    ``RemoteBudget`` when this run hosts a child of a tree on another machine); by default
    a new ``Budget`` of the engine's limits.  The root's environment is made when first
    needed, so a run that only hosts children (``spawn_child``) never makes one.
    """

    def __init__(self, engine: Engine, sink: TraceSink, question: str | None, *,
                 session: Session | None, root_environment: Environment | None,
                 trace_path: str | None, schema: dict[str, Any] | None = None,
                 budget: Ledger | None = None) -> None:
        self.schema = schema
        self.router, self.limits = engine.router, engine.limits
        self.loop_config, self.tools = engine.loop, engine.tools
        self.environment_factory = engine.environment_factory
        self.question, self.session, self.trace_path = question, session, trace_path
        self.started = time.monotonic()
        self.children = engine.children
        if budget is None:
            budget = Budget(self.limits) if self.children is None else \
                self.children.ledger(self.limits)
        self.budget: Ledger = budget
        self.memory = MemorySink()
        self.tracer = Tracer(MultiSink(self.memory, sink), secrets=self.router.secrets())
        cfg = self.loop_config
        self.handler = LMHandler(
            self.router, self.budget, self.tracer, spawn_child=self.spawn_child,
            max_concurrency=cfg.max_concurrency,
            sub_call_max_output_tokens=cfg.sub_call_max_output_tokens,
            sub_calls=cfg.sub_calls, max_answer_chars=cfg.max_answer_chars, cache=engine.cache,
        )
        self.root = NodeRef(_new_id(), None, 0)
        self.owned = session is None and root_environment is None
        self._env = session.environment if session is not None else root_environment
        self.outcome: Outcome | None = None
        self.result: RLMResult | None = None
        self._root_loop: Loop | None = None
        #: Per open node, what removes its environment's ``interrupt`` from ``on_stop``.
        self._stops: dict[str, Callable[[], None]] = {}
        self._openings: dict[str, Plan | None] = {}  # per node: a first step to take

    @property
    def env(self) -> Environment:
        """The root's environment (made by the factory on first use when the run owns it)."""
        if self._env is None:
            self._env = self.environment_factory()
        return self._env

    def _call_for(self, node: NodeRef) -> HostCall:
        return lambda message: self.handler.handle(message, node)

    # -- the root ---------------------------------------------------------------------------
    def __enter__(self) -> Run:
        if self.session is not None:
            self.session.enter(self._call_for(self.root))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: Any) -> None:
        self._finish(error)

    async def __aenter__(self) -> Run:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: Any) -> None:
        if error is not None:
            self.budget.cancel()
        await asyncio.to_thread(self._finish, error)

    def _root_messages(self, context: Any) -> list[Message]:
        call = self._call_for(self.root) if self.session is None else self.session.dispatch
        return self.open_node(self.root, self.question, context, self.env, call, self.session,
                              self.schema)

    def drive_sync(self, context: Any) -> None:
        """Run the root node to its end (``self.outcome``)."""
        loop = self._root_loop = self.loop(self.root, self._root_messages(context),
                                           self.question, self.schema)
        self.outcome = self.run_sync(self.root, loop, self.env)

    async def drive_async(self, context: Any) -> None:
        """The async twin of ``drive_sync``: LM calls run on the event loop."""
        messages = await asyncio.to_thread(self._root_messages, context)
        loop = self._root_loop = self.loop(self.root, messages, self.question, self.schema)
        stepper = _Stepper(loop.steps())
        while (step := stepper.next()) is not None:
            with stepper.performing() as send:
                if isinstance(step, CallLM):
                    send(await self.handler.acomplete(step.request, self.root,
                                                      purpose=step.purpose))
                else:
                    send(await asyncio.to_thread(self._run_block, step, self.env))
        self.outcome = stepper.outcome

    def _finish(self, error: BaseException | None) -> None:
        """Wind the run down whatever happened and set ``self.result``.

        A failure while winding down (closing the environment, updating the session's
        ``history``) after a run that ended well raises an ``EnvError`` whose ``partial``
        is the whole result; after a run that raised, the first error is kept and gets the
        result so far as its ``partial``.
        """
        try:
            self._wind_down(error)
        finally:
            if self.children is not None:
                self.children.finish(self)

    def _wind_down(self, error: BaseException | None) -> None:
        self.budget.close()
        self.release(self.root)
        # Whatever is still running belongs to a finished run (a thread model code left, a
        # batch slot): later LM calls fail, and in-flight ones get a moment to wind down.
        self.budget.trip(Cancelled("the run has ended"))
        outcome = self.outcome if error is None else None
        late: RLMError | None = None
        # Each step runs even when an earlier one is cut short (a second Ctrl-C): the
        # environment is removed and the trace gets its run_end.
        try:
            self.handler.drain(timeout_s=5.0)
        finally:
            try:
                if self.session is not None:
                    self.session.leave()
                elif self.owned and self._env is not None:
                    try:
                        env_call(self.env, "close", self.env.close)
                    except RLMError as exc:
                        late = exc
            finally:
                self.close_node(self.root, outcome, error or late)
        if outcome is None:
            if isinstance(error, RLMError):
                error.run_id = error.run_id or self.root.run_id
                last = self._root_loop.last_reply if self._root_loop is not None else ""
                error.partial = self._result(Outcome(last, "error", self.root.iteration, None))
            return
        if self.session is not None:
            try:
                self.session.record(self.question, outcome.response)
            except RLMError as exc:
                late = late or exc
        self.result = self._result(outcome)
        if late is not None:
            late.run_id = late.run_id or self.root.run_id
            late.partial = self.result
            raise late

    def _result(self, outcome: Outcome) -> RLMResult:
        tree = next(r for r in build_tree(self.memory.events) if r.run_id == self.root.run_id)
        usage = self.budget.usage_snapshot()
        output, output_error = schemas.output_of(outcome.response, self.schema)
        return RLMResult(
            response=outcome.response, stop_reason=outcome.stop_reason,
            cost_usd=sum(u.cost_usd for u in usage.values()), usage=usage,
            iterations=outcome.iterations, elapsed_s=time.monotonic() - self.started,
            trace=tree, run_id=self.root.run_id, trace_path=self.trace_path,
            answer_source=outcome.answer_source, evidence=list(outcome.evidence),
            output=output, output_error=output_error,
        )

    # -- every node -------------------------------------------------------------------------
    def release(self, node: NodeRef) -> None:
        """The node's environment no longer needs interrupting when the tree stops."""
        remove = self._stops.pop(node.run_id, None)
        if remove is not None:
            remove()

    def block_time_s(self, share: float | None = None) -> float | None:
        """The time limit of the next block: ``share`` (``block_time_share``) of the time left."""
        left = self.budget.time_left_s()
        share = share or self.loop_config.block_time_share
        return None if left is None else min(left, max(left * share, MIN_BLOCK_S))

    def prompt_profile(self, node: NodeRef) -> str:
        """The prompt wording for ``node``: the configured one, else its backend's."""
        return (self.loop_config.prompt_profile
                or self.router.for_depth(node.depth).prompt_profile)

    def open_node(self, node: NodeRef, question: str | None, context: Any,
                  env: Environment, call: HostCall, session: Session | None = None,
                  schema: dict[str, Any] | None = None) -> list[Message]:
        """Start ``env`` for ``node``, load ``context`` and return the first messages."""
        cfg = self.loop_config
        env_call(env, "start", env.start, call, self.tools)
        # A cancel or a limit stops the block under way, not only the next step.
        self._stops[node.run_id] = self.budget.on_stop(env.interrupt)
        env_call(env, "set_variable", env.set_variable, SETTINGS_NAME,
                  {"max_answer_chars": cfg.max_answer_chars})
        value = load_context(context)
        names: list[str] = []
        if session is not None:
            env_call(env, "set_variable", env.set_variable, f"context_{session.turn}", value)
            env_call(env, "set_variable", env.set_variable, "history",
                      list(session.history))
            names = [f"context_{i}" for i in range(session.turn + 1)]
        env_call(env, "set_variable", env.set_variable, "context", value)
        self.tracer.emit(
            "run_start", node, **preview_fields(question=question),
            context_type=type(value).__name__,
            context_length=len(value) if hasattr(value, "__len__") else None,
            backend=self.router.for_depth(node.depth).describe(),
            limits=vars(self.limits), environment=type(env).__name__,
        )
        wording = self.prompt_profile(node)
        system = prompts.system_prompt(depth=node.depth, max_depth=self.limits.max_depth,
                                       tools=self.tools, template=cfg.system_prompt,
                                       prompt_profile=wording, sub_calls=cfg.sub_calls)
        chosen = plan(question, value, sub_calls=cfg.sub_calls) if prompts.profile(
            wording).strategy_hints else None
        self._openings[node.run_id] = chosen
        user = prompts.first_user_message(
            question, describe_context(value), session_turn=session.turn if session else 0,
            session_names=names, answer_format=None if schema is None else
            schemas.describe(schema), hint=chosen.hint if chosen else None,
            opening=bool(chosen and chosen.opening))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def close_node(self, node: NodeRef, outcome: Outcome | None,
                   error: BaseException | None, started: float | None = None) -> None:
        data: dict[str, Any] = {"elapsed_s": time.monotonic() - (started or self.started)}
        if outcome is not None:
            self.tracer.emit("final", node, **preview_fields(response=outcome.response),
                             stop_reason=outcome.stop_reason, answer_source=outcome.answer_source,
                             evidence=list(outcome.evidence))
            data["iterations"] = outcome.iterations
        if error is not None:
            data["error"] = {"type": type(error).__name__, "message": str(error)}
        self.tracer.emit("run_end", node, **data)

    def loop(self, node: NodeRef, messages: list[Message], question: str | None,
             schema: dict[str, Any] | None = None) -> Loop:
        backend = self.router.for_depth(node.depth)
        return Loop(node, self.budget, messages, self.loop_config, self.tracer,
                    prompt_profile=self.prompt_profile(node),
                    answer_check=schemas.answer_check(schema),
                    question=question, window_tokens=backend.context_window,
                    opening=self._openings.pop(node.run_id, None))

    def run_sync(self, node: NodeRef, loop: Loop, env: Environment) -> Outcome:
        """Drive ``loop`` to its end, performing each step in this thread."""
        stepper = _Stepper(loop.steps())
        while (step := stepper.next()) is not None:
            with stepper.performing() as send:
                if isinstance(step, CallLM):
                    send(self.handler.complete(step.request, node, purpose=step.purpose))
                else:
                    send(self._run_block(step, env))
        assert stepper.outcome is not None
        return stepper.outcome

    def _run_block(self, step: RunCode, env: Environment) -> ExecResult:
        if self.budget.tripped is not None:  # stopped since the reply: do not start it
            reason = self.budget.tripped
            return ExecResult(error=f"{type(reason).__name__}: {reason}; the block was not run")
        return checked_result(env, env_call(env, "execute", env.execute, step.code,
                                       timeout_s=self.block_time_s(step.time_share)))

    def spawn_child(self, prompt: str, context: Any, parent: NodeRef,
                    schema: dict[str, Any] | None = None) -> str:
        """Run a child RLM one level below ``parent`` (called by ``rlm_query``): here, or
        where the engine's ``children`` runner sends it (a Ray cluster)."""
        node = NodeRef(_new_id(), parent.run_id, parent.depth + 1)
        if self.children is not None:
            return self.children.spawn(self, node, prompt, context, schema)
        return self.run_child(node, prompt, context, schema)

    def run_child(self, node: NodeRef, prompt: str, context: Any,
                  schema: dict[str, Any] | None = None) -> str:
        """Run the child ``node`` to its end in this process and return its answer."""
        env = self.environment_factory()
        started = time.monotonic()
        outcome = None
        try:
            messages = self.open_node(node, prompt, context, env, self._call_for(node),
                                      schema=schema)
            outcome = self.run_sync(node, self.loop(node, messages, prompt, schema), env)
            return outcome.response
        except BaseException as exc:
            self.close_node(node, None, exc, started)
            raise
        finally:
            self.release(node)
            try:
                env_call(env, "close", env.close)
            finally:
                if outcome is not None:
                    self.close_node(node, outcome, None, started)


class ChildRunner(Protocol):
    """Runs child RLMs somewhere else (``rlm.distributed.RayChildren``): ``ledger`` makes a
    new run's ledger (one its children can spend from wherever they run), ``spawn``
    returns the answer of ``node`` (run against ``run``'s ledger and trace) or raises, and
    ``finish`` is told when a run is over."""

    def ledger(self, limits: Limits) -> Ledger: ...

    def spawn(self, run: Run, node: NodeRef, prompt: str, context: Any,
              schema: dict[str, Any] | None) -> str: ...

    def finish(self, run: Run) -> None: ...


class Engine:
    """Runs completions for one configuration; safe to use from several threads at once.

    ``children``: where child RLMs run (``None``: in this process, one thread each)."""

    def __init__(self, router: ModelRouter, environment_factory: EnvironmentFactory,
                 limits: Limits, loop: LoopConfig | None = None,
                 tools: dict[str, Tool] | None = None, cache: LMCache | None = None,
                 children: ChildRunner | None = None) -> None:
        self.router, self.cache, self.children = router, cache, children
        self.environment_factory = environment_factory
        self.limits = limits
        self.loop = loop or LoopConfig()
        self.tools = dict(tools or {})
        self._active: set[Ledger] = set()
        self._active_lock = threading.Lock()

    def cancel(self) -> None:
        """Stop every completion under way: they return with ``stop_reason="cancelled"``."""
        with self._active_lock:
            for budget in self._active:
                budget.cancel()

    @contextlib.contextmanager
    def tracking(self, ledger: Ledger) -> Iterator[Ledger]:
        """``cancel()`` cancels ``ledger`` while the block runs (a run's, or a batch's)."""
        with self._active_lock:
            self._active.add(ledger)
        try:
            yield ledger
        finally:
            with self._active_lock:
                self._active.discard(ledger)

    def open(self, question: str | None, *, sink: TraceSink, session: Session | None = None,
             trace_path: str | None = None, root_environment: Environment | None = None,
             schema: dict[str, Any] | None = None, budget: Ledger | None = None) -> Run:
        """A new ``Run`` (``session``: the persistent REPL to use; ``schema``, ``budget``:
        see ``Run``)."""
        return Run(self, sink, question, session=session, root_environment=root_environment,
                   trace_path=trace_path, schema=schema, budget=budget)

    def run(self, question: str | None, context: Any, *, sink: TraceSink,
            session: Session | None = None, trace_path: str | None = None,
            root_environment: Environment | None = None,
            schema: dict[str, Any] | None = None, budget: Ledger | None = None) -> RLMResult:
        """Run one call tree to its end and return its result.

        Limits end the run with a matching ``stop_reason``; a failure of the backend or the
        environment raises, with the result so far in ``exc.partial``.
        """
        run = self.open(question, sink=sink, session=session, trace_path=trace_path,
                        root_environment=root_environment, schema=schema, budget=budget)
        with self.tracking(run.budget), run:
            run.drive_sync(context)
        assert run.result is not None
        return run.result

    async def arun(self, question: str | None, context: Any, *, sink: TraceSink,
                   session: Session | None = None, trace_path: str | None = None,
                   root_environment: Environment | None = None,
                   schema: dict[str, Any] | None = None,
                   budget: Ledger | None = None) -> RLMResult:
        """The async twin of ``run``; cancelling the task cancels the whole tree."""
        run = self.open(question, sink=sink, session=session, trace_path=trace_path,
                        root_environment=root_environment, schema=schema, budget=budget)
        with self.tracking(run.budget):
            async with run:
                await run.drive_async(context)
        assert run.result is not None
        return run.result
