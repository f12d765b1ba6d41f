"""The embedded local model: a GGUF run in-process by llama.cpp (``llama-cpp-python``).

No API key and no network: the weights come from registry packages (see
``rlm.backends.local_models``).  Calls are serialised (on a small CPU, two generations at
once are no faster than one after the other), but each conversation keeps its own llama.cpp
context ("lane"), so a node's next turn only processes its new tokens even when sub-calls
ran in between.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlm.backends.base import LMBackend
from rlm.backends.local_models import DEFAULT_MODEL, MODELS, AssemblyProgress, ensure_model
from rlm.errors import BackendError, Cancelled, ConfigError, MissingDependencyError
from rlm.types import Completion, CompletionRequest

__all__ = ["LocalBackend", "without_weight_repacking"]

#: Turns start inside a code fence: the model writes code, never a prose guess.
CODE_PREFIX = "```python\n"


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            "the local backend needs llama-cpp-python: pip install 'rlm[local]'"
        ) from exc
    return llama_cpp


class LocalBackend(LMBackend):
    """An embedded GGUF model run by llama.cpp in this process.

    ``model`` is a name from ``rlm.backends.local_models.MODELS`` or a path to a ``.gguf``
    file.  ``n_ctx`` is the window in tokens (a smaller window is faster); ``lanes`` is how
    many conversations keep their prefix cached at once (each costs a KV cache, the
    weights are shared through mmap).  Turn requests are started with a ```python fence
    (``force_code``) so small models always answer with code.  ``progress`` is passed to
    ``ensure_model`` when a named model is assembled on first use (nothing is printed
    without it).
    """

    name = "local"
    prompt_profile = "small"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        lanes: int = 2,
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
        self.n_threads = n_threads or os.cpu_count() or 2
        self.lanes = max(1, lanes)
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.force_code = force_code
        self.seed = seed
        self.verbose = verbose
        self._progress = progress
        self._lock = threading.Lock()  # one generation at a time
        self._contexts: OrderedDict[str, Any] = OrderedDict()
        self._formatter: Any = None
        self.load_s: float | None = None

    # -- loading ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = ensure_model(self._model, progress=self._progress)
        return self._path

    def _new_context(self) -> Any:
        llama_cpp = _import_llama()
        started = time.perf_counter()
        with without_weight_repacking(llama_cpp):
            llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx,
                                  n_threads=self.n_threads, n_batch=512, seed=self.seed,
                                  verbose=self.verbose)
        if self.load_s is None:
            self.load_s = time.perf_counter() - started
        if self._formatter is None:
            self._formatter = self._make_formatter(llm, llama_cpp)
        return llm

    @staticmethod
    def _make_formatter(llm: Any, llama_cpp: Any) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError("the GGUF file has no chat template")
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def _lane(self, key: str | None) -> Any:
        """The llama.cpp context for conversation ``key`` (one-shot calls share one lane)."""
        key = key or "_oneshot"
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        if len(self._contexts) >= self.lanes:
            # Reuse the least recently used context: its cache is simply overwritten.
            _, llm = self._contexts.popitem(last=False)
        else:
            llm = self._new_context()
        self._contexts[key] = llm
        return llm

    def warm_up(self) -> None:
        """Assemble and load the model now rather than at the first call."""
        with self._lock:
            self._lane(None)

    # -- completions ------------------------------------------------------------------------
    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        with self._lock:
            if request.cancel is not None and request.cancel.is_set():
                raise Cancelled("the call tree is stopping")
            llm = self._lane(request.cache_key)
            prompt = self._formatter(messages=request.messages).prompt
            prefix = CODE_PREFIX if self.force_code and request.purpose == "turn" else ""
            tokens = llm.tokenize((prompt + prefix).encode("utf-8"), add_bos=False,
                                  special=True)
            budget = request.max_output_tokens or self.max_output_tokens
            room = self.n_ctx - len(tokens) - 8
            if room < 16:
                raise BackendError(
                    f"the prompt ({len(tokens)} tokens) does not fit the local model's "
                    f"window of {self.n_ctx} tokens"
                )
            cached = 0
            if llm.n_tokens > 0:
                for seen, new in zip(llm._input_ids[: llm.n_tokens], tokens, strict=False):
                    if seen != new:
                        break
                    cached += 1
            stop = ["```"] if prefix else (request.stop or [])
            output = llm.create_completion(
                tokens, max_tokens=min(budget, room), temperature=(
                    self.temperature if request.temperature is None else request.temperature),
                repeat_penalty=self.repeat_penalty, stop=stop, seed=self.seed,
                stopping_criteria=self._cancel_criteria(request),
                grammar=self._grammar(request.grammar),
            )
        text = output["choices"][0]["text"]
        if prefix:
            text = f"{prefix}{text.rstrip()}\n```"
        usage = output.get("usage", {})
        return Completion(
            text=text, model=self.model_name,
            input_tokens=int(usage.get("prompt_tokens", len(tokens))),
            output_tokens=int(usage.get("completion_tokens", 0)),
            cost_usd=0.0, latency_s=time.monotonic() - started,
            cached_input_tokens=min(cached, len(tokens)),
        )

    @staticmethod
    def _grammar(source: str | None) -> Any:
        """A GBNF grammar constraining the output, when the request carries one."""
        if not source:
            return None
        from llama_cpp import LlamaGrammar

        try:
            return LlamaGrammar.from_string(source, verbose=False)
        except ValueError as exc:
            raise ConfigError(f"invalid GBNF grammar: {exc}") from exc

    @staticmethod
    def _cancel_criteria(request: CompletionRequest) -> Any:
        if request.cancel is None:
            return None
        from llama_cpp import StoppingCriteriaList

        event = request.cancel
        return StoppingCriteriaList([lambda tokens, logits: event.is_set()])

    def estimate_cost(self, request: CompletionRequest) -> float | None:
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "n_ctx": self.n_ctx,
                "threads": self.n_threads}

    def close(self) -> None:
        with self._lock:
            for llm in self._contexts.values():
                llm.close()
            self._contexts.clear()


_REPACK_LOCK = threading.Lock()


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return " amx_int8" in info.read()
    except OSError:
        return False


@contextlib.contextmanager
def without_weight_repacking(llama_cpp: Any) -> Iterator[None]:
    """On a CPU with AMX, load the model without llama.cpp's extra weight buffers.

    llama.cpp (as bundled with llama-cpp-python 0.3.x) repacks weights for AMX and then
    crashes in ``decode`` on any prompt of more than one token; its ``use_extra_bufts``
    model parameter turns the repacking off, but ``Llama()`` has no argument for it, so
    the default parameters are adjusted while this model loads.
    """
    low = getattr(llama_cpp, "llama_cpp", None)
    defaults = getattr(low, "llama_model_default_params", None)
    if defaults is None or not _cpu_has_amx():
        yield
        return

    def without_repacking() -> Any:
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _REPACK_LOCK:
        low.llama_model_default_params = without_repacking
        try:
            yield
        finally:
            low.llama_model_default_params = defaults
