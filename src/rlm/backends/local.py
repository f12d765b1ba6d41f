"""The embedded local model: a GGUF run in-process by llama.cpp (``llama-cpp-python``).

No API key and no network: the weights come from registry packages (see
``rlm.backends.local_models``).  The weights are loaded once per backend; every
conversation ("lane") and the one-shot batch get their own KV cache over them (see
``rlm.backends.local_runtime``), and one engine thread decodes for all calls at once
(``rlm.backends.local_engine``): concurrent one-shot sub-calls (``llm_query_batched``)
advance together, one pass over the weights per token for all of them, and a node's next
turn only processes its new tokens even when sub-calls ran in between.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from rlm.backends.base import LMBackend
from rlm.backends.local_engine import EXACT_ROWS, Engine, Job
from rlm.backends.local_models import DEFAULT_MODEL, MODELS, AssemblyProgress, ensure_model
from rlm.backends.local_runtime import Generation, Runtime, without_weight_repacking
from rlm.errors import BackendError, Cancelled, ConfigError
from rlm.types import Completion, CompletionRequest

__all__ = ["LocalBackend", "without_weight_repacking"]

#: Turns start inside a code fence: the model writes code, never a prose guess.
CODE_PREFIX = "```python\n"
#: Compiled grammars kept per JSON Schema (the handler sends the same schema many times).
_SCHEMA_CACHE_SIZE = 64
_log = logging.getLogger(__name__)


def schema_choices(schema: dict[str, Any] | None) -> tuple[str, ...]:
    """The replies a JSON Schema allows, as JSON text, when it is a choice among a few
    strings (``Literal["a", "b"]``) or a list of exactly one of them (``llm_map``'s shape
    for one item per call), else ``()``."""
    if not isinstance(schema, dict):
        return ()
    if schema.get("type") == "array" and schema.get("minItems") == schema.get("maxItems") == 1:
        if set(schema) <= {"type", "items", "minItems", "maxItems", "title", "description"}:
            return tuple(f"[{choice}]" for choice in schema_choices(schema.get("items")))
        return ()
    options = schema.get("enum")
    if (not set(schema) <= {"enum", "type", "title", "description"}
            or schema.get("type", "string") != "string" or not isinstance(options, list)
            or not options or not all(isinstance(o, str) and o for o in options)):
        return ()
    return tuple(json.dumps(o) for o in dict.fromkeys(options))


class LocalBackend(LMBackend):
    """An embedded GGUF model run by llama.cpp in this process.

    ``model`` is a name from ``rlm.backends.local_models.MODELS`` or a path to a ``.gguf``
    file.  ``n_ctx`` is the window in tokens (a smaller window is faster).  ``lanes`` is
    how many conversations keep their prefix cached at once (a KV cache of ``n_ctx``
    tokens each, over the one copy of the weights; one-shot calls too long for the batch
    use one of them).  ``parallel`` one-shot calls are decoded together, each in a KV
    stream of ``batch_window`` tokens (prompt and reply; ``parallel=1`` runs every call
    after the other, in a lane).  With ``batch_exact`` (the default) each of them gets
    the reply it would get alone: at most 3 tokens a decode call, each prompt read on its
    own, and ``parallel`` 3 by default.  ``batch_exact=False`` decodes every generating
    call in one decode call (``parallel`` 16 by default): faster, but a reply at
    temperature 0 may then differ where two tokens nearly tie.  Turn requests are started
    with a ```python fence (``force_code``) so small models always answer with code; a
    request with a ``response_schema`` is constrained to it by a grammar instead (a
    ``grammar`` given with it wins).  ``progress`` is passed to ``ensure_model`` when a
    named model is assembled on first use (nothing is printed without it).
    """

    name = "local"
    prompt_profile = "small"
    enforces_schema = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        lanes: int = 2,
        parallel: int | None = None,
        batch_window: int = 2048,
        batch_exact: bool = True,
        max_output_tokens: int = 512,
        temperature: float = 0.0,
        repeat_penalty: float = 1.1,
        force_code: bool = True,
        seed: int = 0,
        verbose: bool = False,
        progress: AssemblyProgress | None = None,
    ) -> None:
        if model in MODELS:
            self._path: Path | None = None
            self.model_name = model
        elif model.endswith(".gguf"):
            self._path = Path(model)
            if not self._path.is_file():
                raise ConfigError(f"model file not found: {model}")
            self.model_name = self._path.stem
        else:
            raise ConfigError(f"unknown local model {model!r}; known: {', '.join(MODELS)} "
                              "(or a path to a .gguf file)")
        self._model = model
        self.n_ctx = n_ctx
        self.context_window = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 2
        self.lanes = max(1, lanes)
        self.parallel = max(1, parallel if parallel is not None else (
            EXACT_ROWS if batch_exact else 16))
        self.batch_window = max(256, min(batch_window, n_ctx))
        self.batch_exact = batch_exact
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.force_code = force_code
        self.seed = seed
        self.verbose = verbose
        self._progress = progress
        self._lock = threading.Lock()  # guards loading and closing
        self._runtime: Runtime | None = None
        self._engine: Engine | None = None
        self._schemas: OrderedDict[str, str | None] = OrderedDict()
        self.load_s: float | None = None

    # -- loading ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = ensure_model(self._model, progress=self._progress)
        return self._path

    def _loaded(self) -> tuple[Runtime, Engine]:
        with self._lock:
            if self._runtime is None or self._engine is None:
                started = time.perf_counter()
                runtime = Runtime(self.path, verbose=self.verbose)
                if self.load_s is None:
                    self.load_s = time.perf_counter() - started
                self._runtime = runtime
                self._engine = Engine(runtime, n_ctx=self.n_ctx, n_threads=self.n_threads,
                                      lanes=self.lanes, parallel=self.parallel,
                                      batch_window=self.batch_window,
                                      exact=self.batch_exact)
            return self._runtime, self._engine

    def warm_up(self) -> None:
        """Assemble and load the model now rather than at the first call."""
        _, engine = self._loaded()
        engine.prepare()

    # -- completions ------------------------------------------------------------------------
    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        if request.cancel is not None and request.cancel.is_set():
            raise Cancelled("the call tree is stopping")
        runtime, engine = self._loaded()
        prompt = runtime.formatter(messages=request.messages).prompt
        grammar = request.grammar
        typed = not grammar and request.response_schema is not None
        choices = schema_choices(request.response_schema) if typed else ()
        if typed:  # the reply is JSON of the schema's shape: no code fence
            grammar = self._schema_grammar(request.response_schema)
        code = self.force_code and request.purpose == "turn" and not typed
        prefix = CODE_PREFIX if code else ""
        tokens = runtime.tokenize(prompt + prefix)
        budget = request.max_output_tokens or self.max_output_tokens
        room = self.n_ctx - len(tokens) - 8
        if room < 16:
            raise BackendError(
                f"the prompt ({len(tokens)} tokens) does not fit the local model's "
                f"window of {self.n_ctx} tokens"
            )
        temperature = self.temperature if request.temperature is None else request.temperature
        sampler = runtime.sampler(temperature=temperature, repeat_penalty=self.repeat_penalty,
                                  seed=self.seed, grammar=grammar)
        generation = Generation(runtime, min(budget, room),
                                ["```"] if prefix else (request.stop or []), choices)
        job = Job(tokens=tokens, generation=generation, sampler=sampler,
                  lane=request.cache_key, cancel=request.cancel)
        try:
            engine.submit(job)
            job.done.wait()
        finally:
            if job.done.is_set():
                sampler.close()
        if job.error is not None:
            raise job.error
        text = generation.reply()
        if prefix:
            text = f"{prefix}{text.rstrip()}\n```"
        return Completion(
            text=text, model=self.model_name, input_tokens=len(tokens),
            output_tokens=len(generation.tokens), cost_usd=0.0,
            latency_s=time.monotonic() - started, cached_input_tokens=job.reused,
        )

    def _schema_grammar(self, schema: dict[str, Any] | None) -> str | None:
        """The GBNF grammar of a JSON Schema (compiled once per schema), or None."""
        if schema is None:
            return None
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if key in self._schemas:
                self._schemas.move_to_end(key)
                return self._schemas[key]
        from llama_cpp import LlamaGrammar

        try:
            grammar: str | None = LlamaGrammar.from_json_schema(json.dumps(schema),
                                                                verbose=False)._grammar
        except Exception as exc:  # a schema the converter cannot express: not enforced
            _log.warning("local backend: cannot turn the schema into a grammar (%s); the "
                         "reply is not constrained", exc)
            grammar = None
        with self._lock:
            self._schemas[key] = grammar
            while len(self._schemas) > _SCHEMA_CACHE_SIZE:
                self._schemas.popitem(last=False)
        return grammar

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "n_ctx": self.n_ctx,
                "threads": self.n_threads, "parallel": self.parallel}

    def close(self) -> None:
        with self._lock:
            engine, runtime = self._engine, self._runtime
            self._engine = self._runtime = None
        if engine is not None:
            engine.close()
        if runtime is not None:
            runtime.close()
