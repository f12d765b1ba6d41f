"""The public entry point: ``RLM(...).completion(prompt)``."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from rlm import registry
from rlm.backends.base import LMBackend
from rlm.bridge import schema as schemas
from rlm.core.engine import Engine, Session
from rlm.core.limits import Ledger, Limits
from rlm.core.loop import LoopConfig
from rlm.core.routing import ModelRouter
from rlm.environments.base import Environment
from rlm.errors import ConfigError
from rlm.result import RLMResult
from rlm.tools import ToolSpec, make_tools
from rlm.trace.cache import LMCache, open_cache
from rlm.trace.sinks import JsonlSink, MultiSink, NullSink, TraceSink

if TYPE_CHECKING:
    from rlm.batch import Executor, OnResult

__all__ = ["RLM"]

BackendSpec = str | LMBackend | Mapping[str, Any]
EnvironmentSpec = str | Environment | Callable[[], Environment]
TraceTarget = str | os.PathLike[str] | TraceSink
TraceSpec = TraceTarget | list[TraceTarget] | tuple[TraceTarget, ...]
CacheSpec = str | os.PathLike[str] | LMCache


class LoopOptions(TypedDict, total=False):
    """Keyword shortcuts for the fields of ``LoopConfig`` (``RLM(max_output_chars=...)``)."""

    max_output_chars: int
    max_answer_chars: int | None
    max_output_tokens: int | None
    sub_call_max_output_tokens: int | None
    temperature: float | None
    max_concurrency: int
    extract_on_limit: bool
    system_prompt: str | None
    prompt_profile: str | None
    sub_calls: bool
    block_time_share: float
    verify_answers: bool | None


#: Keywords of earlier releases, still accepted with a DeprecationWarning: what replaces each.
_RENAMED = {"trace_dir": "trace=...", "trace_path": "trace=...", "trace_sink": "trace=...",
            "sub_backend_kwargs": 'sub_backend={"backend": name, **options}'}
#: What ``**options`` may hold besides those: the fields of ``LoopConfig``.
_LOOP_FIELDS = frozenset(field.name for field in fields(LoopConfig))


def _pop_renamed(options: dict[str, Any]) -> dict[str, Any]:
    """Take the renamed keywords out of ``options``, warning for each."""
    renamed = {name: options.pop(name) for name in list(options) if name in _RENAMED}
    for name in renamed:
        warnings.warn(f"RLM({name}=...) is deprecated and will be removed in the next "
                      f"release; use {_RENAMED[name]}", DeprecationWarning, stacklevel=3)
    return renamed


def _typed(result: RLMResult, spec: Any) -> RLMResult:
    """``result`` with ``output`` in the Python form of ``spec`` (``Model.model_validate``
    for a pydantic model); a value the spec's own checks refuse leaves ``output_error``."""
    if spec is None or result.output_error is not None:
        return result
    try:
        result.output = schemas.build(result.output, spec)
    except Exception as exc:  # a pydantic validator, a dataclass __post_init__...
        result.output, result.output_error = None, (f"the answer does not fit {spec!r}: "
                                                    f"{type(exc).__name__}: {exc}")
    return result


def _environment_class(spec: EnvironmentSpec) -> Any:
    """The class of the environment ``spec`` names, when known before a factory runs."""
    if isinstance(spec, str):
        return registry.get_environment_class(spec)
    return type(spec) if isinstance(spec, Environment) else None


def _environment_factory(spec: EnvironmentSpec,
                         kwargs: Mapping[str, Any] | None) -> Callable[[], Environment]:
    if isinstance(spec, str):
        registry.get_environment_class(spec)  # fail now on an unknown name
        return lambda: registry.create_environment(spec, dict(kwargs or {}))
    if isinstance(spec, Environment):
        cls = type(spec)
        return lambda: cls(**dict(kwargs or {}))
    if callable(spec):
        return spec
    raise ConfigError(f"environment must be a name, an Environment or a factory: {spec!r}")


def _trace_targets(trace: TraceSpec | None, renamed: dict[str, Any]
                   ) -> tuple[Path | None, Path | None, list[TraceSink]]:
    """``(directory, file, sinks)`` from ``trace=`` and the renamed keywords it replaces."""
    given = [k for k in ("trace_dir", "trace_path", "trace_sink") if renamed.get(k) is not None]
    if trace is not None and given:
        raise ConfigError(f"give trace=, not also {given[0]}=")
    if renamed.get("trace_dir") is not None and renamed.get("trace_path") is not None:
        raise ConfigError("give trace_dir or trace_path, not both")
    directory, file = renamed.get("trace_dir"), renamed.get("trace_path")
    sinks = [renamed["trace_sink"]] if renamed.get("trace_sink") is not None else []
    for target in trace if isinstance(trace, list | tuple) else [trace]:
        if target is None:
            continue
        if isinstance(target, TraceSink):
            sinks.append(target)
            continue
        if not isinstance(target, str | os.PathLike):
            raise ConfigError(f"trace must be a directory, a file path or a TraceSink "
                              f"(or a list of them), not {target!r}")
        if directory is not None or file is not None:
            raise ConfigError("trace= names at most one directory or file")
        path = Path(target)
        if path.is_dir() or (not path.exists() and not path.suffix):
            directory = path
        else:
            file = path
    return (None if directory is None else Path(directory),
            None if file is None else Path(file), sinks)


def _executor(name: str, kwargs: Mapping[str, Any] | None, recipe: dict[str, Any],
              instance: Environment | None) -> Executor | None:
    """``None`` for ``"local"``; else the registered executor (``"ray"``: extra ``ray``)."""
    if name == "local":
        if kwargs:
            raise ConfigError("executor_kwargs are for an executor other than 'local'")
        return None
    cls = registry.get_executor_class(name)
    if instance is not None:
        raise ConfigError(f"executor={name!r} builds each child's environment where it runs: "
                          "pass the environment by name or factory, not an instance")
    executor: Executor = cls(dict(kwargs or {}), recipe)
    return executor


class RLM:
    """A Recursive Language Model: ``completion(prompt)`` answers over an input of any size.

    The input goes into a Python REPL as ``context``; the model writes code to read it and
    may call sub-models from that code.  Arguments:

    - ``backend`` / ``backend_kwargs``: the root model, by registered name (``"openai"``,
      ``"scripted"``, ...) with its options, a mapping ``{"backend": name, **options}``, or
      an ``LMBackend`` instance (the caller closes it).
    - ``environment`` / ``environment_kwargs``: where code runs (``"local"``, ...), an
      ``Environment`` instance (used for the root; the caller closes it) or a factory.
    - ``max_depth``, ``max_iterations``, ``max_budget`` (USD), ``max_timeout`` (seconds),
      ``max_tokens``, ``max_errors``: limits shared by the whole call tree.  ``None`` (the
      default) takes the value from ``limits=Limits(...)`` when given, else ``Limits``'
      default (depth 1, 30 iterations, the rest unlimited).
    - ``verbose=True`` draws the live call tree on stderr.
    - ``loop``: a ``LoopConfig``, how each node runs (output caps, temperature,
      concurrency, extraction, system prompt, prompt profile, ``sub_calls``); each of its
      fields may also be given as a keyword (``max_output_chars=5000``), which wins.
    - ``sub_backend``: the model for every call below the root (``llm_query``, child RLMs),
      in any form ``backend`` takes; defaults to the root model.
    - ``models``: more models that code can pick with ``llm_query(prompt, model="name")``:
      ``{"name": LMBackend}`` or ``{"name": {"backend": "openai", "model": ...}}``.
    - ``tools``: extra functions for the REPL, ``{"name": function}`` or ``{"name": "code
      that defines name"}``; outside the ``local`` environment a function travels as its
      source, so it must be self-contained (see ``rlm.tools``).
    - ``persistent``: keep the REPL across calls (``context_0``, ``context_1``, ``history``).
    - ``trace``: where the trace goes: a directory (one JSONL file per call: a path that is
      an existing directory, or has no suffix), a file (any other path, ``run.jsonl``: each
      call appends), a ``TraceSink``, or a list of these (at most one path).
    - ``cache``: a cache of LM calls shared by every call of this object (and, through the
      file, by other processes): a directory or a SQLite file path, or an
      ``rlm.trace.cache.LMCache`` (``MemoryCache()``, ``SQLiteCache(path, turns=True)``).
    - ``executor``: where child RLMs (``rlm_query``) and ``batch()`` items run:
      ``"local"`` (threads of this process, the default) or ``"ray"`` (tasks on a Ray
      cluster, extra ``ray``; ``executor_kwargs`` are ``rlm.distributed.RayOptions``:
      ``address``, ``num_cpus``, ``resources``...).  The limits stay one ledger for the
      whole tree; see docs/distributed.md.
      Sub-calls whose reply is stored are served from it at no cost (``cache:<model>`` in
      ``usage``, ``cached: true`` in the trace).  A path is opened here and closed by
      ``close()``; an object is the caller's.

    Renamed keywords still work for one release, with a ``DeprecationWarning``:
    ``trace_dir``, ``trace_path``, ``trace_sink`` (now ``trace``) and ``sub_backend_kwargs``
    (now ``sub_backend={"backend": name, **options}``).
    """

    def __init__(
        self,
        backend: BackendSpec = "openai",
        backend_kwargs: Mapping[str, Any] | None = None,
        environment: EnvironmentSpec = "local",
        environment_kwargs: Mapping[str, Any] | None = None,
        max_depth: int | None = None,
        max_iterations: int | None = None,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        verbose: bool = False,
        *,
        limits: Limits | None = None,
        loop: LoopConfig | None = None,
        sub_backend: BackendSpec | None = None,
        models: Mapping[str, BackendSpec] | None = None,
        tools: Mapping[str, ToolSpec] | None = None,
        persistent: bool = False,
        trace: TraceSpec | None = None,
        cache: CacheSpec | None = None,
        executor: str = "local",
        executor_kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[LoopOptions],
    ) -> None:
        recipe = {"backend": backend, "backend_kwargs": backend_kwargs,
                  "environment": environment, "environment_kwargs": environment_kwargs,
                  "limits": None, "loop": None, "sub_backend": sub_backend, "models": models,
                  "tools": tools, "cache": cache if isinstance(cache, str | os.PathLike)
                  else None, "executor": executor, "executor_kwargs": executor_kwargs}
        renamed = _pop_renamed(options)  # type: ignore[arg-type]
        unknown = sorted(set(options) - _LOOP_FIELDS)
        if unknown:
            raise TypeError(f"RLM() got an unexpected keyword argument {unknown[0]!r}")
        self.limits = (limits or Limits()).with_overrides(
            max_depth=max_depth, max_iterations=max_iterations, max_budget=max_budget,
            max_timeout=max_timeout, max_tokens=max_tokens, max_errors=max_errors)
        self.loop = replace(loop or LoopConfig(), **options)
        checked_tools = make_tools(tools, _environment_class(environment))
        self._trace_targets = _trace_targets(trace, renamed)
        self.verbose = verbose
        self.persistent = persistent

        self.cache = open_cache(cache)
        self._owns_cache = self.cache is not None and self.cache is not cache
        self._owned: list[LMBackend] = []
        self._session: Session | None = None
        try:  # the backends built so far are closed when a later one fails
            self.router = self._router(backend, backend_kwargs, sub_backend,
                                       renamed.get("sub_backend_kwargs"), models)
        except BaseException:
            self.close()
            raise

        self._env_instance = environment if isinstance(environment, Environment) else None
        self._env_factory = _environment_factory(environment, environment_kwargs)
        recipe.update(limits=self.limits, loop=self.loop)
        self._recipe = recipe
        self._executor_name = executor
        try:
            self.executor = _executor(executor, executor_kwargs, recipe, self._env_instance)
        except BaseException:
            self.close()
            raise
        self.engine = Engine(self.router, self._env_factory, self.limits, self.loop,
                             checked_tools, cache=self.cache,
                             children=None if self.executor is None else
                             self.executor.children())

    # -- construction helpers ---------------------------------------------------------------
    def _router(self, backend: BackendSpec, backend_kwargs: Mapping[str, Any] | None,
                sub_backend: BackendSpec | None, sub_kwargs: Mapping[str, Any] | None,
                models: Mapping[str, BackendSpec] | None) -> ModelRouter:
        root = self._backend(backend, backend_kwargs, "backend")
        sub = None if sub_backend is None else self._backend(sub_backend, sub_kwargs,
                                                             "sub_backend")
        named = {name: self._backend(spec, None, f"models[{name!r}]")
                 for name, spec in (models or {}).items()}
        router = ModelRouter(root, sub, named)
        unpriced = router.unpriced() if self.limits.max_budget is not None else []
        if unpriced:
            raise ConfigError(
                f"max_budget is set but the price of {', '.join(unpriced)} is unknown; pass "
                "backend_kwargs={'price_per_mtok': (input_usd, output_usd)}"
            )
        return router

    def _backend(self, spec: BackendSpec, kwargs: Mapping[str, Any] | None,
                 what: str) -> LMBackend:
        backend, created = registry.backend_from_spec(spec, kwargs, what=what)
        if created:
            self._owned.append(backend)
        return backend

    def _sink(self) -> tuple[TraceSink, str | None]:
        sinks: list[TraceSink] = []
        path: Path | None = None
        directory, file, extra = self._trace_targets
        if file is not None:
            path = file
        elif directory is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = directory / f"rlm-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        if path is not None:
            sinks.append(JsonlSink(path, secrets=self.router.secrets()))
        sinks += extra
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
                   root_prompt: str | None = None, schema: Any = None) -> RLMResult:
        """Answer over an input of any size.

        ``completion(prompt)``: the prompt itself is the input (``context`` in the REPL).
        ``completion(question, context=data)``: the model is shown ``question``, and
        ``data`` (str, bytes, list, dict, or a ``pathlib.Path`` to a file or folder) goes
        into the REPL.  Always returns an ``RLMResult``.

        ``schema`` asks for a structured answer: a pydantic model, a Python type
        (``list[str]``, a ``TypedDict``, a dataclass...) or a JSON Schema dict.  The model
        is told the format, an answer that does not match is refused (the model submits
        again), and ``result.output`` is the parsed answer (``Model.model_validate(...)``
        for a pydantic model), or ``None`` with ``result.output_error`` saying why.
        """
        return self.complete_within(prompt, context, root_prompt=root_prompt, schema=schema)

    def complete_within(self, prompt: Any, context: Any = None, *,
                        root_prompt: str | None = None, schema: Any = None,
                        budget: Ledger | None = None) -> RLMResult:
        """``completion``, spending from ``budget`` (a ``Budget`` whose ``parent`` is a
        batch's ledger, say) instead of a ledger of its own."""
        question, data = self._split(prompt, context, root_prompt)
        json_schema = None if schema is None else schemas.to_json_schema(schema)
        sink, path = self._sink()
        session = self._session_for_call()
        try:
            if session is not None:
                with session.lock:
                    return _typed(self.engine.run(question, data, sink=sink, session=session,
                                                  trace_path=path, schema=json_schema,
                                                  budget=budget), schema)
            return _typed(self.engine.run(question, data, sink=sink, trace_path=path,
                                          root_environment=self._env_instance,
                                          schema=json_schema, budget=budget), schema)
        finally:
            sink.close()

    async def acompletion(self, prompt: Any, context: Any = None, *,
                          root_prompt: str | None = None, schema: Any = None) -> RLMResult:
        """The async twin of ``completion``."""
        question, data = self._split(prompt, context, root_prompt)
        json_schema = None if schema is None else schemas.to_json_schema(schema)
        sink, path = self._sink()
        session = self._session_for_call()
        try:
            if session is not None:
                await asyncio.to_thread(session.lock.acquire)
                try:
                    return _typed(await self.engine.arun(
                        question, data, sink=sink, session=session, trace_path=path,
                        schema=json_schema), schema)
                finally:
                    session.lock.release()
            return _typed(await self.engine.arun(question, data, sink=sink, trace_path=path,
                                                 root_environment=self._env_instance,
                                                 schema=json_schema), schema)
        finally:
            sink.close()

    def batch(self, prompts: Sequence[Any], contexts: Sequence[Any] | None = None, *,
              executor: str | None = None, batch_budget: float | None = None,
              max_concurrency: int | None = None, schema: Any = None,
              on_result: OnResult | None = None) -> list[RLMResult]:
        """Run one completion per prompt (with ``contexts[i]`` as its input when given) and
        return the results in order.  A failing item does not stop the others: its result
        has ``stop_reason="error"`` and ``error``.  ``batch_budget`` (USD) caps the whole
        batch on top of each completion's own limits; ``executor`` (default: this RLM's)
        is ``"local"`` (``max_concurrency`` threads, default 4) or ``"ray"`` (tasks
        across the cluster, at most ``max_concurrency`` in flight, default all);
        ``on_result(index, result)`` is called as each one finishes."""
        from rlm.batch import items_of, run_batch

        if self.persistent:
            raise ConfigError("batch() runs independent completions; persistent=True keeps "
                              "one REPL, so use completion() in a loop")
        if batch_budget is not None:
            if isinstance(batch_budget, bool) or not isinstance(batch_budget, int | float) \
                    or not batch_budget >= 0:
                raise ConfigError(f"batch_budget must be a number >= 0 (USD), "
                                  f"got {batch_budget!r}")
            unpriced = self.router.unpriced()
            if unpriced:
                raise ConfigError(f"batch_budget is set but the price of "
                                  f"{', '.join(unpriced)} is unknown")
        if max_concurrency is not None and (isinstance(max_concurrency, bool) or not
                                            isinstance(max_concurrency, int)
                                            or max_concurrency < 1):
            raise ConfigError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        items = items_of(prompts, contexts)
        chosen = executor or self._executor_name
        if chosen == "local":
            return run_batch(self, items, batch_budget=batch_budget,
                             max_concurrency=max_concurrency or 4, schema=schema,
                             on_result=on_result)
        remote = self.executor if chosen == self._executor_name else None
        remote = remote or _executor(chosen, None, dict(self._recipe), self._env_instance)
        assert remote is not None
        return remote.batch(self, items, batch_budget=batch_budget,
                            max_in_flight=max_concurrency or len(items) or 1,
                            schema=schema, on_result=on_result)

    async def abatch(self, prompts: Sequence[Any], contexts: Sequence[Any] | None = None,
                     **kwargs: Any) -> list[RLMResult]:
        """The async twin of ``batch`` (it runs in a worker thread)."""
        return await asyncio.to_thread(self.batch, prompts, contexts, **kwargs)

    def write_trace(self, result: RLMResult, events: list[Any]) -> None:
        """Write ``events`` (a completion run elsewhere) where this RLM's traces go."""
        sink, path = self._sink()
        try:
            for event in events:
                sink.emit(event)
        finally:
            sink.close()
        result.trace_path = path

    @staticmethod
    def typed(result: RLMResult, schema: Any) -> RLMResult:
        """``result`` with ``output`` validated against ``schema`` (a pydantic model...)."""
        return result if schema is None else _typed(result, schema)

    def split(self, prompt: Any, context: Any) -> tuple[str | None, Any]:
        """The question and the input of ``completion(prompt, context)``."""
        return self._split(prompt, context, None)

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
        self._close_cache()

    def _close_cache(self) -> None:
        if self._owns_cache and self.cache is not None:
            self.cache.close()
            self._owns_cache = False

    async def aclose(self) -> None:
        """The async twin of ``close``: also closes async HTTP clients inside their loop."""
        if self._session is not None:
            self._session.close()
            self._session = None
        for backend in self._owned:
            await backend.aclose()
        self._owned.clear()
        self._close_cache()

    async def __aenter__(self) -> RLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
