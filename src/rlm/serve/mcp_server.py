"""``rlm mcp``: the engine as a Model Context Protocol server (the official ``mcp`` SDK),
over stdio or streamable HTTP.

Tools: ``answer`` (a question over a text or a file/folder under the data directory),
``open_session`` / ``ask`` / ``close_session`` (load a context once, ask several
questions of it in one persistent REPL), ``list_traces`` and ``read_trace``.  While a run
goes, each progress line is sent as a progress notification (when the client asked for
them with a progress token); a client that cancels the call cancels the call tree.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from rlm.api import RLM
from rlm.core.limits import Limits
from rlm.errors import RLMError
from rlm.result import RLMResult
from rlm.serve.guard import Refused, merge_limits
from rlm.serve.progress import RelaySink
from rlm.serve.service import Service, Ticket
from rlm.trace.events import TraceEvent
from rlm.trace.tree import load

__all__ = ["AnswerResult", "build_mcp"]

#: Sessions open at once; ``open_session`` refuses one more.
MAX_SESSIONS = 32
#: The most characters ``read_trace`` returns (the tree, or raw events with ``raw=True``).
TRACE_CHARS = 40_000
INSTRUCTIONS = (
    "Answers questions over long inputs with a Recursive Language Model: the input goes "
    "into a Python REPL and a model reads it with code and sub-calls. Use `answer` for "
    "one question (context= text, or path= a file or folder under the server's data "
    "directory); `open_session` then `ask` to ask several questions of one input.")


class AnswerResult(TypedDict):
    """What ``answer`` and ``ask`` return."""

    answer: str
    stop_reason: str
    cost_usd: float
    iterations: int
    elapsed_s: float
    trace_id: str | None


class TraceInfo(TypedDict):
    """One entry of ``list_traces``."""

    trace_id: str
    question: str | None
    stop_reason: str | None
    cost_usd: float
    modified: str


class _Switch:
    """A trace sink that forwards to the sink of the question under way (sessions ask one
    at a time); ``close`` ends that question's stream, not the switch."""

    def __init__(self) -> None:
        self.target: RelaySink | None = None

    def emit(self, event: TraceEvent) -> None:
        target = self.target
        if target is not None:
            target.emit(event)

    def close(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.close()


@dataclass
class _Session:
    id: str
    profile: str
    limits: Any
    context: Any
    model: RLM
    switch: _Switch
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    questions: int = 0
    opened: float = field(default_factory=time.time)


def _result(result: RLMResult, trace_id: str | None) -> AnswerResult:
    return AnswerResult(answer=result.response, stop_reason=result.stop_reason,
                        cost_usd=result.cost_usd, iterations=result.iterations,
                        elapsed_s=round(result.elapsed_s, 3), trace_id=trace_id)


async def _reporting(ctx: Context, relay: RelaySink) -> None:
    """Send each progress line of ``relay`` as a progress notification until it ends."""
    step = 0
    while (item := await relay.queue.get()) is not None:
        step += 1
        await ctx.report_progress(step, None, item.text)


async def _reported(ctx: Context, relay: RelaySink,
                    work: Callable[[], Awaitable[RLMResult]]) -> RLMResult:
    """``await work()`` while its progress goes out; a failed run becomes a ``ToolError``
    (outside the task group, so it is not wrapped in an exception group)."""
    outcome: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(_reporting, ctx, relay)
        try:
            outcome["result"] = await work()
        except RLMError as exc:
            outcome["error"] = exc
        finally:
            relay.queue.put_nowait(None)
    error = outcome.get("error")
    if error is not None:
        raise ToolError(f"{type(error).__name__}: {error}") from error
    return outcome["result"]


def build_mcp(service: Service, *, name: str = "rlm") -> MCPServer:
    """The MCP server answering with ``service`` (its profiles, limits and traces)."""
    server = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")
    sessions: dict[str, _Session] = {}
    sessions_lock = threading.Lock()

    def limits_of(**given: Any) -> dict[str, Any]:
        return {k: v for k, v in given.items() if v is not None}

    def context_of(context: str | None, path: str | None) -> Any:
        if context is not None and path is not None:
            raise ToolError("give context or path, not both")
        if path is not None:
            return refused_as_tool_error(service.context_path, path)
        return context

    @server.tool()
    async def answer(question: str, ctx: Context, context: str | None = None,
                     path: str | None = None, model: str | None = None,
                     max_budget: float | None = None, max_depth: int | None = None,
                     max_timeout: float | None = None, max_iterations: int | None = None
                     ) -> AnswerResult:
        """Answer a question over a long input: `context` is the text, or `path` names a
        file or folder under the server's data directory (without either, the question
        itself is the input). The limits (USD, levels, seconds, turns) lower the
        server's for this call."""
        data = context_of(context, path)
        ticket = refused_as_tool_error(service.admit, model, limits_of(
            max_budget=max_budget, max_depth=max_depth, max_timeout=max_timeout,
            max_iterations=max_iterations))
        relay = RelaySink(asyncio.get_running_loop())
        result = await _reported(ctx, relay, lambda: service.run(ticket, question, data,
                                                                 sinks=[relay]))
        return _result(result, trace_id_of(ticket))

    def trace_id_of(ticket: Ticket) -> str | None:
        return ticket.trace_id if service.config.trace_dir is not None else None

    @server.tool()
    async def open_session(context: str | None = None, path: str | None = None,
                           model: str | None = None, max_budget: float | None = None,
                           max_depth: int | None = None, max_timeout: float | None = None,
                           max_iterations: int | None = None) -> dict[str, Any]:
        """Load an input once (`context` text, or `path` under the data directory) and
        get a session id for `ask`. The limits apply to each question; the REPL (its
        variables, `history` of earlier answers) persists across questions."""
        data = context_of(context, path)
        if data is None:
            raise ToolError("a session needs context or path")
        profile = refused_as_tool_error(service.profile, model)
        limits = refused_as_tool_error(merge_limits, profile.limits, limits_of(
            max_budget=max_budget, max_depth=max_depth, max_timeout=max_timeout,
            max_iterations=max_iterations))
        with sessions_lock:
            if len(sessions) >= MAX_SESSIONS:
                raise ToolError(f"{MAX_SESSIONS} sessions are open, the most this server "
                                "keeps; close one with close_session")
        switch = _Switch()
        trace = [switch] if service.config.trace_dir is None else [service.config.trace_dir,
                                                                   switch]
        model_ = await anyio.to_thread.run_sync(lambda: service.catalog.open(
            profile, limits, trace=trace, persistent=True))  # type: ignore[arg-type]
        session = _Session(uuid.uuid4().hex[:12], profile.name, limits, data, model_, switch)
        with sessions_lock:
            sessions[session.id] = session
        size = len(data) if hasattr(data, "__len__") else None
        return {"session_id": session.id, "model": profile.name, "context_length": size}

    @server.tool()
    async def ask(session_id: str, question: str, ctx: Context) -> AnswerResult:
        """Ask a question of the input loaded by `open_session`."""
        with sessions_lock:
            session = sessions.get(session_id)
        if session is None:
            raise ToolError(f"no session {session_id!r}; open one with open_session")
        async with session.lock:
            ticket = refused_as_tool_error(service.admit, session.profile,
                                           _as_dict(session.limits))
            # The session's RLM lives across questions; its engine takes this question's
            # limits (the daily cap may have lowered max_budget) before the run opens.
            session.model.engine.limits = ticket.limits
            relay = RelaySink(asyncio.get_running_loop())
            session.switch.target = relay
            holder: dict[str, RLMResult] = {}

            def work() -> RLMResult:
                try:
                    holder["result"] = session.model.completion(question,
                                                                context=session.context)
                except RLMError as exc:
                    if getattr(exc, "partial", None) is not None:
                        holder["result"] = exc.partial  # type: ignore[attr-defined]
                    raise
                return holder["result"]

            try:
                result = await _reported(ctx, relay, lambda: service.call(
                    work, session.model.cancel))
            finally:
                session.switch.target = None
                spent = holder["result"].cost_usd if "result" in holder else 0.0
                service.release(ticket, spent)
            session.questions += 1
        trace = None if result.trace_path is None else _stem(result.trace_path)
        return _result(result, trace)

    @server.tool()
    async def close_session(session_id: str) -> str:
        """Close a session and free its REPL."""
        with sessions_lock:
            session = sessions.pop(session_id, None)
        if session is None:
            raise ToolError(f"no session {session_id!r}")
        async with session.lock:
            await anyio.to_thread.run_sync(session.model.close)
        return f"closed {session_id} after {session.questions} questions"

    @server.tool()
    async def list_traces(limit: int = 20) -> list[TraceInfo]:
        """The latest traces (one per question answered), newest first."""
        return await anyio.to_thread.run_sync(lambda: _list_traces(service, limit))

    @server.tool()
    async def read_trace(trace_id: str, raw: bool = False) -> str:
        """A trace as its call tree in text (raw=true: its JSONL events), cut to 40,000
        characters."""
        return await anyio.to_thread.run_sync(lambda: _read_trace(service, trace_id, raw))

    server.rlm_sessions = sessions  # type: ignore[attr-defined]  # closed by close_sessions
    return server


def close_sessions(server: MCPServer) -> None:
    """Close every session the server still holds (at shutdown)."""
    sessions: dict[str, _Session] = getattr(server, "rlm_sessions", {})
    for session in list(sessions.values()):
        session.model.close()
    sessions.clear()


def _as_dict(limits: Limits) -> dict[str, Any]:
    return {k: v for k, v in vars(limits).items() if v is not None}


def _stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.removesuffix(".jsonl")


def refused_as_tool_error(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Refused as refused:
        raise ToolError(refused.message) from None


def _trace_file(service: Service, trace_id: str) -> Any:
    directory = service.config.trace_dir
    if directory is None:
        raise ToolError("this server writes no traces (started with --no-trace)")
    if "/" in trace_id or "\\" in trace_id or trace_id.startswith("."):
        raise ToolError(f"not a trace id: {trace_id!r}")
    path = directory / f"{trace_id}.jsonl"
    if not path.is_file():
        raise ToolError(f"no trace {trace_id!r}")
    return path


def _list_traces(service: Service, limit: int) -> list[TraceInfo]:
    directory = service.config.trace_dir
    if directory is None or not directory.is_dir():
        return []
    files = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    found: list[TraceInfo] = []
    for path in files[:max(0, limit)]:
        try:
            node = load(path)
        except (RLMError, OSError, ValueError):
            continue  # a file being written, or not a trace
        found.append(TraceInfo(trace_id=path.stem, question=node.question,
                               stop_reason=node.stop_reason, cost_usd=node.cost_usd,
                               modified=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                      time.localtime(path.stat().st_mtime))))
    return found


def _read_trace(service: Service, trace_id: str, raw: bool) -> str:
    path = _trace_file(service, trace_id)
    if raw:
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        from rlm.trace.console import print_tree

        out = io.StringIO()
        print_tree(load(path), file=out)
        text = out.getvalue()
    return text if len(text) <= TRACE_CHARS else text[:TRACE_CHARS] + "\n… [cut]"
