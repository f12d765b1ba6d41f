"""The public entry point: ``RLM(...).completion(prompt)``."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlm import registry
from rlm.backends.base import LMBackend
from rlm.bridge.guest import MAX_ANSWER_CHARS, RESERVED_NAMES
from rlm.core.engine import Engine, EngineConfig, Session
from rlm.core.limits import Limits
from rlm.core.loop import LoopConfig
from rlm.core.routing import ModelRouter
from rlm.environments.base import Environment
from rlm.errors import ConfigError
from rlm.result import RLMResult
from rlm.tools import Tool, ToolSpec, make_tools, shipped_tools
from rlm.trace.sinks import JsonlSink, MultiSink, NullSink, TraceSink

__all__ = ["RLM"]

BackendSpec = str | LMBackend
EnvironmentSpec = str | Environment | Callable[[], Environment]


def _backend(spec: BackendSpec | None, kwargs: Mapping[str, Any] | None) -> LMBackend | None:
    if spec is None:
        return None
    if isinstance(spec, LMBackend):
        if kwargs:
            raise ConfigError("backend_kwargs only apply when the backend is given by name")
        return spec
    if isinstance(spec, str):
        return registry.create_backend(spec, dict(kwargs or {}))
    raise ConfigError(f"backend must be a registered name or an LMBackend, not {spec!r}")


def _check_tools_reach(tools: Mapping[str, Tool], environment: EnvironmentSpec) -> None:
    """Fail now, not at the first completion, when a tool cannot reach the environment."""
    if isinstance(environment, str):
        cls = registry.get_environment_class(environment)
    elif isinstance(environment, Environment):
        cls = type(environment)
    else:
        return  # a factory: checked when it builds its environment
    if not cls.in_process:
        shipped_tools(tools, cls.name)


class RLM:
    """A Recursive Language Model: ``completion(prompt)`` answers over an input of any size.

    The input goes into a Python REPL as ``context``; the model writes code to read it and
    may call sub-models from that code.  Arguments:

    - ``backend`` / ``backend_kwargs``: the root model, by registered name (``"openai"``,
      ``"scripted"``, ...) with its options, or an ``LMBackend`` instance.
    - ``sub_backend`` / ``sub_backend_kwargs``: the model for every call below the root
      (``llm_query``, child RLMs); defaults to the root model.
    - ``models``: more models that code can pick with ``llm_query(prompt, model="name")``:
      ``{"name": LMBackend}`` or ``{"name": {"backend": "openai", "model": ...}}``.
    - ``environment`` / ``environment_kwargs``: where code runs (``"local"``, ...), an
      ``Environment`` instance (used for the root; the caller closes it) or a factory.
    - ``max_depth``, ``max_iterations``, ``max_budget`` (USD), ``max_timeout`` (seconds),
      ``max_tokens``, ``max_errors``: limits shared by the whole call tree (see ``Limits``).
    - ``tools``: extra functions for the REPL, ``{"name": function}`` or ``{"name": "code
      that defines name"}``; outside the ``local`` environment a function travels as its
      source, so it must be self-contained (see ``rlm.tools``).
    - ``persistent``: keep the REPL across calls (``context_0``, ``context_1``, ``history``).
    - ``max_output_tokens`` / ``sub_call_max_output_tokens``: caps on the tokens one reply
      may generate, for the nodes' turns and for sub-calls (``None``: the backend's default).
    - ``max_answer_chars``: the longest answer, in characters (default 1,000,000; ``None``:
      no limit).  The REPL refuses a longer ``FINAL``/``FINAL_VAR`` with an
      ``AnswerTooLong`` error the model sees, before the answer leaves the REPL; an
      ``llm_query`` reply or ``rlm_query`` answer handed to REPL code is cut to it with a
      marker.
    - ``sub_calls=False``: a REPL-only RLM: ``llm_query`` / ``rlm_query`` are disabled and
      not offered in the prompt (the paper's "no sub-calls" ablation).
    - ``trace_dir`` (one JSONL file per call) or ``trace_path`` (append to one file);
      ``verbose=True`` draws the live call tree on stderr.
    """

    def __init__(
        self,
        backend: BackendSpec = "openai",
        backend_kwargs: Mapping[str, Any] | None = None,
        environment: EnvironmentSpec = "local",
        environment_kwargs: Mapping[str, Any] | None = None,
        max_depth: int = 1,
        max_iterations: int = 30,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        verbose: bool = False,
        *,
        sub_backend: BackendSpec | None = None,
        sub_backend_kwargs: Mapping[str, Any] | None = None,
        models: Mapping[str, LMBackend | Mapping[str, Any]] | None = None,
        tools: Mapping[str, ToolSpec] | None = None,
        persistent: bool = False,
        trace_dir: str | os.PathLike[str] | None = None,
        trace_path: str | os.PathLike[str] | None = None,
        trace_sink: TraceSink | None = None,
        max_output_chars: int = 20_000,
        max_concurrency: int = 16,
        extract_on_limit: bool = True,
        system_prompt: str | None = None,
        temperature: float | None = None,
        sub_calls: bool = True,
        max_output_tokens: int | None = None,
        sub_call_max_output_tokens: int | None = None,
        max_answer_chars: int | None = MAX_ANSWER_CHARS,
    ) -> None:
        self.limits = Limits(max_depth=max_depth, max_iterations=max_iterations,
                             max_budget=max_budget, max_timeout=max_timeout,
                             max_tokens=max_tokens, max_errors=max_errors)
        if max_answer_chars is not None and (isinstance(max_answer_chars, bool) or not
                                             isinstance(max_answer_chars, int)
                                             or max_answer_chars < 1):
            raise ConfigError(f"max_answer_chars must be a positive int or None, "
                              f"got {max_answer_chars!r}")
        clash = sorted(set(tools or {}) & set(RESERVED_NAMES))
        if clash:
            raise ConfigError(f"tool names clash with REPL names: {', '.join(clash)}")
        checked_tools = make_tools(tools)
        _check_tools_reach(checked_tools, environment)
        if trace_dir is not None and trace_path is not None:
            raise ConfigError("give trace_dir or trace_path, not both")
        self._owned: list[LMBackend] = []
        root = _backend(backend, backend_kwargs)
        assert root is not None
        if isinstance(backend, str):
            self._owned.append(root)
        sub = _backend(sub_backend, sub_backend_kwargs)
        if sub is not None and isinstance(sub_backend, str):
            self._owned.append(sub)
        named: dict[str, LMBackend] = {}
        for name, spec in (models or {}).items():
            if isinstance(spec, LMBackend):
                named[name] = spec
            else:
                options = dict(spec)
                kind = options.pop("backend", None)
                if not isinstance(kind, str):
                    raise ConfigError(f"models[{name!r}] needs a 'backend' name")
                named[name] = registry.create_backend(kind, options)
                self._owned.append(named[name])
        self.router = ModelRouter(root, sub, named)
        self._check_prices()

        self._env_instance = environment if isinstance(environment, Environment) else None
        self._env_factory = self._environment_factory(environment, environment_kwargs)
        self.engine = Engine(
            self.router, self._env_factory, self.limits,
            EngineConfig(
                loop=LoopConfig(max_output_chars=max_output_chars,
                                extract_on_limit=extract_on_limit, temperature=temperature,
                                max_output_tokens=max_output_tokens,
                                max_answer_chars=max_answer_chars),
                tools=checked_tools, system_prompt=system_prompt, max_concurrency=max_concurrency,
                sub_calls=sub_calls, sub_call_max_output_tokens=sub_call_max_output_tokens,
            ),
        )
        self.verbose = verbose
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.trace_path = Path(trace_path) if trace_path is not None else None
        self.trace_sink = trace_sink
        self.persistent = persistent
        self._session: Session | None = None

    # -- construction helpers ---------------------------------------------------------------
    def _environment_factory(self, spec: EnvironmentSpec,
                             kwargs: Mapping[str, Any] | None) -> Callable[[], Environment]:
        if isinstance(spec, str):
            registry.get_environment_class(spec)  # fail now on an unknown name
            return lambda: registry.create_environment(spec, kwargs)
        if isinstance(spec, Environment):
            cls = type(spec)
            return lambda: cls(**dict(kwargs or {}))
        if callable(spec):
            return spec
        raise ConfigError(f"environment must be a name, an Environment or a factory: {spec!r}")

    def _check_prices(self) -> None:
        if self.limits.max_budget is None:
            return
        from rlm.types import CompletionRequest

        probe = CompletionRequest(messages=[{"role": "user", "content": "x"}])
        unknown = [b.model_name for b in self.router.all() if b.estimate_cost(probe) is None]
        if unknown:
            raise ConfigError(
                f"max_budget is set but the price of {', '.join(unknown)} is unknown; pass "
                "backend_kwargs={'price_per_mtok': (input_usd, output_usd)}"
            )

    def _sink(self) -> tuple[TraceSink, str | None]:
        sinks: list[TraceSink] = []
        path: Path | None = None
        secrets = self.router.secrets()
        if self.trace_path is not None:
            path = self.trace_path
        elif self.trace_dir is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self.trace_dir / f"rlm-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        if path is not None:
            sinks.append(JsonlSink(path, secrets=secrets))
        if self.trace_sink is not None:
            sinks.append(self.trace_sink)
        if self.verbose:
            from rlm.trace.console import ConsoleSink

            sinks.append(ConsoleSink())
        if not sinks:
            return NullSink(), None
        return MultiSink(*sinks), None if path is None else str(path)

    def _session_for_call(self) -> Session | None:
        if not self.persistent:
            return None
        if self._session is None:
            if self._env_instance is not None:
                self._session = Session(self._env_instance, owned=False)
            else:
                self._session = Session(self._env_factory(), owned=True)
        return self._session

    # -- public API -------------------------------------------------------------------------
    def completion(self, prompt: Any, context: Any = None, *,
                   root_prompt: str | None = None) -> RLMResult:
        """Answer over an input of any size.

        ``completion(prompt)``: the prompt itself is the input (``context`` in the REPL).
        ``completion(question, context=data)``: the model is shown ``question``, and
        ``data`` (str, bytes, list, dict, or a ``pathlib.Path`` to a file or folder) goes
        into the REPL.  Always returns an ``RLMResult``.
        """
        question, data = self._split(prompt, context, root_prompt)
        sink, path = self._sink()
        session = self._session_for_call()
        try:
            if session is not None:
                with session.lock:
                    return self.engine.run(question, data, sink=sink, session=session,
                                           trace_path=path)
            return self.engine.run(question, data, sink=sink, trace_path=path,
                                   root_environment=self._env_instance)
        finally:
            sink.close()

    async def acompletion(self, prompt: Any, context: Any = None, *,
                          root_prompt: str | None = None) -> RLMResult:
        """The async twin of ``completion``."""
        question, data = self._split(prompt, context, root_prompt)
        sink, path = self._sink()
        session = self._session_for_call()
        try:
            if session is not None:
                await asyncio.to_thread(session.lock.acquire)
                try:
                    return await self.engine.arun(question, data, sink=sink, session=session,
                                                  trace_path=path)
                finally:
                    session.lock.release()
            return await self.engine.arun(question, data, sink=sink, trace_path=path,
                                          root_environment=self._env_instance)
        finally:
            sink.close()

    @staticmethod
    def _split(prompt: Any, context: Any, root_prompt: str | None) -> tuple[str | None, Any]:
        if context is None:
            return root_prompt, prompt
        if not isinstance(prompt, str):
            raise ConfigError("with context=..., the prompt must be the question (a str)")
        return prompt, context

    def cancel(self) -> None:
        """Stop every completion under way; each returns with ``stop_reason="cancelled"``."""
        self.engine.cancel()

    def close(self) -> None:
        """Close the persistent REPL and the backends this object created."""
        if self._session is not None:
            self._session.close()
            self._session = None
        for backend in self._owned:
            backend.close()
        self._owned.clear()

    async def aclose(self) -> None:
        """The async twin of ``close``: also closes async HTTP clients inside their loop."""
        if self._session is not None:
            self._session.close()
            self._session = None
        for backend in self._owned:
            await backend.aclose()
        self._owned.clear()

    async def __aenter__(self) -> RLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
