"""The REPL runtime: the helpers model code sees and the cell runner.

This file is the single implementation of ``llm_query``, ``rlm_query``, their batched forms,
``FINAL``, ``FINAL_VAR``, ``SHOW_VARS`` and ``budget`` for every environment.  It uses only
the standard library, so it can be shipped as a file into a subprocess or a sandbox.  It
reaches the host through one function, ``call(message) -> reply`` (in-process for the
local environment, a socket or an HTTP broker elsewhere).  Requests are
``{"op": "llm_query" | "llm_query_batched" | "rlm_query" | "rlm_query_batched" | "budget",
...}``; replies carry ``text``, ``results`` (one ``{text}`` or ``{error}`` per slot),
``remaining``, or ``error: {type, message}`` (see ``rlm.core.handler.LMHandler.handle``).
A typed call (``schema=``: a Python type or a JSON Schema, ``rlm.bridge.schema``) sends the
JSON Schema as ``"schema"`` and gets ``value`` (or ``{value}`` per slot) instead of ``text``:
the parsed JSON, turned into the spec's Python form here.

Bounds, applied here so that nothing larger ever leaves the REPL: a final answer longer
than ``max_answer_chars`` is refused (``FINAL``/``FINAL_VAR`` raise ``AnswerTooLong`` in the
cell, so the model can submit something shorter); each captured stream keeps at most
``capture_limit`` characters (head and tail) and so does a block's error text.  The host
sets ``max_answer_chars`` through ``set_variable(SETTINGS_NAME, {"max_answer_chars": N})``,
which every environment already forwards; that name is never bound in the namespace.
"""

from __future__ import annotations

import ast
import contextvars
import io
import json
import os
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, Literal

try:  # inside the package
    from rlm.bridge import guards, protocol, schema
except ImportError:  # shipped as plain files next to this one
    import guards  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    import schema  # type: ignore[no-redef]

RESERVED_NAMES = (
    "context",
    "llm_query",
    "llm_query_batched",
    "llm_map",
    "rlm_query",
    "rlm_query_batched",
    "FINAL",
    "FINAL_VAR",
    "SHOW_VARS",
    "budget",
    "history",
    "LMQueryError",
    "LimitReached",
    "QueryFailed",
    "Literal",  # for ``schema=list[Literal["a", "b"]]`` without an import
)

Call = Callable[[dict[str, Any]], dict[str, Any]]

#: The longest final answer ``FINAL``/``FINAL_VAR`` accept, unless the host sets another.
MAX_ANSWER_CHARS = 1_000_000
#: ``set_variable`` under this name configures the runtime instead of binding a variable.
SETTINGS_NAME = "__rlm_settings__"


# -- errors model code can catch ----------------------------------------------------------
class LMQueryError(Exception):
    """An ``llm_query`` / ``rlm_query`` failed; ``kind`` names the host-side error class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class LimitReached(LMQueryError):
    """The call tree ran out of budget, tokens, time or iterations: give your answer now."""


LIMIT_KINDS = {
    "LimitExceeded", "IterationLimitExceeded", "BudgetExceeded", "TimeLimitExceeded",
    "TokenLimitExceeded", "ErrorLimitExceeded", "Cancelled",
}


class AnswerTooLong(ValueError):
    """``FINAL``/``FINAL_VAR`` got an answer longer than the run's ``max_answer_chars``."""


class QueryFailed(str):
    """The text put in a batch slot whose call failed; the other slots are unaffected."""

    error_kind: str = ""

    def __new__(cls, kind: str, message: str) -> QueryFailed:
        self = super().__new__(cls, f"[query failed: {kind}: {message}]")
        self.error_kind = kind
        return self


def _raise_for(error: dict[str, Any]) -> None:
    kind, message = error.get("type", "Error"), error.get("message", "")
    raise (LimitReached if kind in LIMIT_KINDS else LMQueryError)(kind, message)


def _disconnected(message: dict[str, Any]) -> dict[str, Any]:
    return protocol.error_reply("Cancelled", "the REPL is closed")


def _value(reply: dict[str, Any], spec: Any) -> Any:
    """A reply's text, or for a typed call its value in the Python form of ``spec``."""
    return reply["text"] if spec is None else schema.build(reply["value"], spec)


def _slot(result: dict[str, Any], spec: Any = None) -> Any:
    if "error" in result:
        return QueryFailed(result["error"].get("type", "Error"), result["error"].get("message", ""))
    return _value(result, spec)


_schema = schema  # the module, under a name the helpers' ``schema`` arguments do not hide


def _typed(message: dict[str, Any], spec: Any) -> dict[str, Any]:
    """``message`` with the JSON Schema of ``spec`` (a ``TypeError`` in the cell for a spec
    that is none, before any request)."""
    return message if spec is None else {**message, "schema": schema.to_json_schema(spec)}


class _Shown(str):
    """A string that shows itself plainly when echoed as the last expression of a cell."""

    def __repr__(self) -> str:
        return str(self)


# -- per-cell output capture ----------------------------------------------------------------
class _Capture:
    """Collects one stream of one cell, keeping the head and the tail when it grows huge."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.dropped = 0

    def write(self, text: str) -> None:
        if self.head_len < self.half:
            take = text[: self.half - self.head_len]
            self.head.append(take)
            self.head_len += len(take)
            text = text[len(take):]
        if text:
            self.tail += text
            if len(self.tail) > 2 * self.half:
                cut = len(self.tail) - self.half
                self.dropped += cut
                self.tail = self.tail[cut:]

    def value(self) -> str:
        """The head and at most as much of the tail: never more than the limit, plus the
        marker (the tail grows to twice that between trims)."""
        tail, dropped = self.tail, self.dropped
        if len(tail) > self.half:
            dropped += len(tail) - self.half
            tail = tail[-self.half:]
        middle = f"\n... [{dropped} characters dropped] ...\n" if dropped else ""
        return "".join(self.head) + middle + tail


_current: contextvars.ContextVar[dict[str, _Capture] | None] = contextvars.ContextVar(
    "rlm_capture", default=None
)
_install_lock = threading.Lock()


class _StreamProxy(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the current cell's buffer
    (held in a context variable, so concurrent cells never mix), else to the real stream."""

    def __init__(self, fallback: Any, which: str) -> None:
        self._fallback = fallback
        self._which = which

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        buffers = _current.get()
        if buffers is None:
            return self._fallback.write(text)
        buffers[self._which].write(text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._fallback.flush()

    def isatty(self) -> bool:
        if _current.get() is not None:
            return False
        return bool(getattr(self._fallback, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")


def install_capture() -> None:
    """Route ``sys.stdout``/``sys.stderr`` through the proxy (once; again if replaced)."""
    with _install_lock:
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy(sys.stderr, "stderr")


# -- the runtime ----------------------------------------------------------------------------
def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _bounded(text: str, limit: int) -> str:
    """``text`` cut to its head and tail around a marker when longer than ``limit``."""
    if len(text) <= limit:
        return text
    half = max(1, limit // 2)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters dropped] ...\n{text[-half:]}"


class GuestRuntime:
    """One REPL: its namespace, its helpers and ``run_cell``.

    ``call`` sends a message to the host's LM handler and returns its reply.
    ``tools`` are extra callables to expose by name.
    """

    def __init__(self, call: Call, *, tools: dict[str, Any] | None = None,
                 capture_limit: int = protocol.CAPTURE_LIMIT,
                 max_answer_chars: int | None = MAX_ANSWER_CHARS) -> None:
        self._call = call
        self.capture_limit = capture_limit
        #: The longest answer ``FINAL``/``FINAL_VAR`` accept; ``None``: no limit.
        self.max_answer_chars = max_answer_chars
        self.namespace: dict[str, Any] = {"__name__": "__main__",
                                          "__builtins__": guards.guarded_builtins()}
        self._final: tuple[str, str] | None = None
        self._helpers = self._make_helpers()
        self._pristine = {name: guards.snapshot(value) for name, value in self._helpers.items()
                          if isinstance(value, types.FunctionType)}
        self._tools = dict(tools or {})
        self._context: Any = None
        self._restore()

    def disconnect(self) -> None:
        """Cut this REPL from the host: every later request (from a thread model code left
        running, say) fails with ``Cancelled``."""
        self._call = _disconnected

    # helpers ------------------------------------------------------------------------------
    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = self._call(message)
        if "error" in reply and reply.get("error"):
            _raise_for(reply["error"])
        return reply

    def _make_helpers(self) -> dict[str, Any]:
        def llm_query(prompt: str, model: str | None = None, schema: Any = None) -> Any:
            """Ask a language model one question; ``prompt`` must contain all it needs.
            ``schema`` (``int``, ``list[str]``, ``Literal["a", "b"]``, a JSON Schema...):
            return the reply parsed and checked as that type instead of text."""
            return _value(self._request(_typed({"op": "llm_query", "prompt": str(prompt),
                                                "model": model}, schema)), schema)

        def llm_query_batched(prompts: list[str], model: str | None = None,
                              schema: Any = None) -> list[Any]:
            """Ask many questions concurrently; answers come back in order."""
            reply = self._request(_typed({"op": "llm_query_batched",
                                          "prompts": [str(p) for p in prompts], "model": model},
                                         schema))
            return [_slot(r, schema) for r in reply["results"]]

        def llm_map(instruction: str, items: list[Any], schema: Any = None, per_call: int = 20,
                    model: str | None = None) -> list[Any]:
            """Apply ``instruction`` to every item in few calls: ``per_call`` items per
            call, each call answering a list of ``schema`` values; one value per item, in
            order (``QueryFailed`` for the items of a call that failed)."""
            return _schema.run_map(self._request, _slot, str(instruction), list(items), schema,
                                   per_call, model)

        def rlm_query(prompt: str, context: Any = None, schema: Any = None) -> Any:
            """Run a child RLM (its own REPL) on ``context`` to answer ``prompt``."""
            return _value(self._request(_typed({"op": "rlm_query", "prompt": str(prompt),
                                                "context": context}, schema)), schema)

        def rlm_query_batched(prompts: list[str], contexts: list[Any] | None = None,
                              schema: Any = None) -> list[Any]:
            """Run several child RLMs concurrently; answers come back in order."""
            if contexts is not None and len(contexts) != len(prompts):
                raise ValueError("rlm_query_batched: prompts and contexts differ in length")
            reply = self._request(_typed({"op": "rlm_query_batched",
                                          "prompts": [str(p) for p in prompts],
                                          "contexts": contexts}, schema))
            return [_slot(r, schema) for r in reply["results"]]

        def FINAL(answer: Any) -> None:
            """Submit ``answer`` as the final answer."""
            self._submit(_as_text(answer), "FINAL")

        missing = object()

        def FINAL_VAR(name_or_value: Any, value: Any = missing) -> None:
            """Submit a variable (by name) or a value as the final answer.

            ``FINAL_VAR("answer")`` submits the variable ``answer``;
            ``FINAL_VAR("key", value)`` stores ``value`` as ``key`` and submits it;
            ``FINAL_VAR(value)`` submits the value itself.
            """
            if value is not missing:
                self.namespace[str(name_or_value)] = value
                chosen = value
            elif isinstance(name_or_value, str) and name_or_value in self.namespace:
                chosen = self.namespace[name_or_value]
            elif isinstance(name_or_value, str) and name_or_value.isidentifier():
                raise NameError(
                    f"FINAL_VAR: no variable named {name_or_value!r}; assign it first "
                    "or submit the value with FINAL(value)"
                )
            else:
                chosen = name_or_value
            self._submit(_as_text(chosen), "FINAL_VAR")

        def SHOW_VARS() -> str:
            """List the variables defined in the REPL, with their types and sizes."""
            lines = []
            for name, value in self.namespace.items():
                if name.startswith("_") or name in self._helpers or name in self._tools:
                    continue
                if isinstance(value, types.ModuleType):
                    continue
                size = f", len={len(value)}" if hasattr(value, "__len__") else ""
                lines.append(f"{name}: {type(value).__name__}{size}")
            return _Shown("\n".join(lines) if lines else "(no variables yet)")

        def budget() -> dict[str, Any]:
            """What is left of every limit of the call tree."""
            return self._request({"op": "budget"})["remaining"]

        return {
            "llm_query": llm_query,
            "llm_query_batched": llm_query_batched,
            "llm_map": llm_map,
            "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched,
            "FINAL": FINAL,
            "FINAL_VAR": FINAL_VAR,
            "SHOW_VARS": SHOW_VARS,
            "budget": budget,
            "LMQueryError": LMQueryError,
            "LimitReached": LimitReached,
            "AnswerTooLong": AnswerTooLong,
            "QueryFailed": QueryFailed,
            "Literal": Literal,
        }

    def _submit(self, text: str, source: str) -> None:
        limit = self.max_answer_chars
        if limit is not None and len(text) > limit:
            raise AnswerTooLong(
                f"{source}: the answer has {len(text):,} characters, more than the "
                f"{limit:,} allowed (max_answer_chars); it was not submitted. Submit a "
                "shorter answer: what the question asks for, a summary, or a count")
        self._final = (text, source)

    def load_tools(self, sources: dict[str, str]) -> None:
        """Define tools from code: each source runs in its own namespace (which has the
        helpers, so a tool may call ``llm_query``) and must bind its name; the tools are
        then exposed, and restored when model code rebinds them."""
        for name, source in sources.items():
            space: dict[str, Any] = {"__name__": f"rlm_tool_{name}",
                                     "__builtins__": guards.guarded_builtins(), **self._helpers}
            try:
                exec(compile(source, f"<tool {name}>", "exec"), space)
            except BaseException as exc:  # user code: report what broke, keep the REPL
                raise RuntimeError(f"tool {name!r} failed to load: "
                                   f"{type(exc).__name__}: {exc}") from None
            if name not in space:
                raise RuntimeError(f"tool {name!r}: its code does not define {name!r}")
            self._tools[name] = space[name]
        self._restore()

    def set_variable(self, name: str, value: Any) -> None:
        if name == SETTINGS_NAME:
            self.configure(dict(value))
            return
        if name == "context":
            self._context = value
        self.namespace[name] = value

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply the host's settings (``{"max_answer_chars": N | None}``)."""
        if "max_answer_chars" in settings:
            limit = settings["max_answer_chars"]
            self.max_answer_chars = None if limit is None else int(limit)

    def _restore(self) -> list[str]:
        """Put back every scaffold name that model code rebound; return those names."""
        restored = [name for name, snapshot in self._pristine.items()
                    if guards.reset(self._helpers[name], snapshot)]
        wanted = {**self._helpers, **self._tools, "context": self._context}
        for name, value in wanted.items():
            if name == "context" and "context" not in self.namespace and value is None:
                continue
            if self.namespace.get(name, None) is not value:
                if name in self.namespace and name not in restored:
                    restored.append(name)
                self.namespace[name] = value
        self.namespace["__builtins__"] = guards.guarded_builtins()
        return restored

    # running code -------------------------------------------------------------------------
    def run_cell(self, code: str) -> dict[str, Any]:
        """Run one block; return ``{stdout, stderr, error, final, elapsed_s, notes}``."""
        install_capture()
        buffers = {"stdout": _Capture(self.capture_limit), "stderr": _Capture(self.capture_limit)}
        token = _current.set(buffers)
        self._final = None
        error = None
        started = time.perf_counter()
        pid = os.getpid()
        try:
            self._exec(code)
        except BaseException as exc:  # model code may raise anything, even SystemExit
            error = _bounded(self._format_error(exc), self.capture_limit)
        finally:
            if os.getpid() != pid:
                # A process forked by model code finished the block: it must never go on
                # into the scaffold (it would read the parent's control channel).
                os._exit(0)
            _current.reset(token)
        restored = self._restore()
        notes = [
            f"`{name}` is provided by the REPL and was restored; keep your results in "
            "other variables" for name in restored
        ]
        return {
            "stdout": buffers["stdout"].value(),
            "stderr": buffers["stderr"].value(),
            "error": error,
            "final": None if self._final is None
            else {"text": self._final[0], "source": self._final[1]},
            "elapsed_s": time.perf_counter() - started,
            "notes": notes,
        }

    def _exec(self, code: str) -> None:
        tree = ast.parse(code, "<repl>", "exec")
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, "<repl>", "exec"), self.namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<repl>", "eval"), self.namespace)
            if value is not None:
                print(repr(value))

    @staticmethod
    def _format_error(exc: BaseException) -> str:
        if isinstance(exc, SyntaxError):
            return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<repl>"]
        lines = [f"  line {f.lineno}" for f in frames[-3:]]
        head = "Traceback (innermost last):\n" + "\n".join(lines) + "\n" if lines else ""
        return head + "".join(traceback.format_exception_only(type(exc), exc)).rstrip()

