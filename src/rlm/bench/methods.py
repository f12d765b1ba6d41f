"""The methods compared on each instance, all driving the same backend instance.

- ``base``: one plain call to the model with the context cut to its window (the paper's
  "base"): the first characters of the context that fit ``window - max_output_tokens -
  the question``, estimated at 4 characters a token (cut further, by a fifth at a time,
  when the backend still refuses the prompt as too long).  The window is
  ``MethodConfig.window_tokens``, else the backend's ``n_ctx`` (the local model), else
  128,000 tokens.
- ``rlm``: ``RLM(backend, max_depth=1, max_iterations=..., max_timeout=...)``, the paper's
  setting: ``llm_query`` / ``llm_query_batched`` are plain sub-calls to the same model, and
  ``rlm_query`` is also a plain call (``max_depth=1`` starts no child RLM).
- ``rlm-no-sub``: the same RLM with the REPL only, ``RLM(..., sub_calls=False)``: the
  prompt does not offer ``llm_query`` / ``rlm_query``, and a call to them raises in the
  model's code without reaching a model.
- ``bm25``: the context split into chunks of ``chunk_tokens`` on line boundaries, indexed
  with BM25 (``bm25s``); the best chunks for the question that fit the window are put back
  in document order and given to the model in one call, as ``base`` does.
- ``summarize``: an iterative compaction agent: the context is read in window-sized
  chunks, each call rewrites running notes (``summary_tokens`` at most) from the notes and
  the next chunk, and a last call answers from the notes.

Every method returns a ``MethodResult``: answer, usage (``rlm.ModelUsage``: calls,
input/output tokens, cost in USD, 0.0 when the backend does not price its calls) and
latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm import (
    RLM,
    BackendError,
    Completion,
    CompletionRequest,
    LMBackend,
    MissingDependencyError,
    ModelUsage,
)
from rlm.bench.tasks import Instance

__all__ = ["METHODS", "MethodConfig", "MethodResult", "run_method", "window_tokens"]

DEFAULT_WINDOW = 128_000
CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by the methods (see the module docstring for what each uses)."""

    window_tokens: int | None = None
    max_output_tokens: int = 512
    max_iterations: int = 10
    max_timeout: float | None = None
    chunk_tokens: int = 1_000
    summary_tokens: int = 512
    environment: str = "local"
    #: A sub-call cache for the RLM methods (``RLM(cache=...)``): a directory or SQLite file.
    cache: str | None = None


@dataclass
class MethodResult:
    """What one method did on one instance: its answer, the usage of all its calls."""

    answer: str | None
    usage: ModelUsage = field(default_factory=ModelUsage)
    latency_s: float = 0.0
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, completion: Completion) -> None:
        """Count one call of the method's own (the RLM methods take the tree's usage)."""
        self.usage.add(completion)


def window_tokens(backend: LMBackend, config: MethodConfig) -> int:
    """The model's window: the configured one, else the backend's ``n_ctx``, else 128k."""
    if config.window_tokens:
        return config.window_tokens
    n_ctx = getattr(backend, "n_ctx", None)
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else DEFAULT_WINDOW


def _too_long(exc: BackendError) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("window", "context length", "too long", "maximum context"))


def _ask(backend: LMBackend, prompt: str, max_output_tokens: int, result: MethodResult
         ) -> str:
    completion = backend.complete(CompletionRequest(
        messages=[{"role": "user", "content": prompt}], max_output_tokens=max_output_tokens))
    result.add(completion)
    return completion.text.strip()


def _input_chars(backend: LMBackend, config: MethodConfig, fixed: str, reserve: int) -> int:
    room = window_tokens(backend, config) - reserve - len(fixed) / 3 - 32
    return max(0, int(room * CHARS_PER_TOKEN))


_ANSWER_PROMPT = """\
Answer the question about the text below.
Question: {question}

<text>
{text}
</text>{note}

Question: {question}
Reply with the answer only, no explanation."""


def _answer_over(backend: LMBackend, instance: Instance, config: MethodConfig,
                 pieces: Callable[[int], tuple[str, str]], result: MethodResult) -> str:
    """Ask once over ``pieces(budget_chars)`` -> ``(text, note)``, cutting on overflow."""
    fixed = _ANSWER_PROMPT.format(question=instance.question, text="", note="")
    budget = _input_chars(backend, config, fixed + "x" * 200, config.max_output_tokens)
    for _ in range(6):
        text, note = pieces(budget)
        prompt = _ANSWER_PROMPT.format(question=instance.question, text=text, note=note)
        try:
            answer = _ask(backend, prompt, config.max_output_tokens, result)
            result.stop_reason = "final"
            return answer
        except BackendError as exc:
            if not _too_long(exc) or budget == 0:
                raise
            budget = int(budget * 0.8)
    raise BackendError("the prompt does not fit the model's window even cut to a quarter")


def base(instance: Instance, backend: LMBackend, config: MethodConfig) -> MethodResult:
    result = MethodResult(None)

    def head(budget: int) -> tuple[str, str]:
        text = instance.context[:budget]
        result.extra["seen_fraction"] = round(len(text) / max(1, len(instance.context)), 4)
        cut = len(text) < len(instance.context)
        return text, ("\n[The text was cut here to fit the model's window.]" if cut else "")

    result.answer = _answer_over(backend, instance, config, head, result)
    return result


def _rlm_result(model: RLM, instance: Instance) -> MethodResult:
    done = model.completion(instance.question, context=instance.context)
    sub_calls = sum(1 for node in done.trace.walk() for call in node.lm_calls
                    if call.data.get("purpose") not in ("turn", "extract"))
    usage = ModelUsage(calls=sum(u.calls for u in done.usage.values()),
                       input_tokens=done.input_tokens, output_tokens=done.output_tokens,
                       cost_usd=done.cost_usd)
    return MethodResult(
        done.response, usage, stop_reason=done.stop_reason,
        extra={"iterations": done.iterations, "sub_calls": sub_calls},
    )


def rlm(instance: Instance, backend: LMBackend, config: MethodConfig) -> MethodResult:
    with RLM(backend=backend, environment=config.environment, max_depth=1,
             max_iterations=config.max_iterations, max_timeout=config.max_timeout,
             cache=config.cache) as model:
        return _rlm_result(model, instance)


def rlm_no_sub(instance: Instance, backend: LMBackend, config: MethodConfig) -> MethodResult:
    with RLM(backend=backend, environment=config.environment, max_depth=1,
             max_iterations=config.max_iterations, max_timeout=config.max_timeout,
             sub_calls=False, cache=config.cache) as model:
        return _rlm_result(model, instance)


def _chunks(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut at line ends when possible."""
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.rfind("\n", start + size // 2, end)
            end = newline + 1 if newline != -1 else end
        chunks.append(text[start:end])
        start = end
    return chunks


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise MissingDependencyError("the bm25 method needs bm25s: pip install 'rlm[bench]'"
                                     ) from exc
    return bm25s


def bm25(instance: Instance, backend: LMBackend, config: MethodConfig) -> MethodResult:
    bm25s = _import_bm25s()
    result = MethodResult(None)
    chunks = _chunks(instance.context, int(config.chunk_tokens * 4))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(chunks, stopwords="en", show_progress=False),
                    show_progress=False)
    query = bm25s.tokenize([instance.question], stopwords="en", show_progress=False)
    ids, _scores = retriever.retrieve(query, k=len(chunks), show_progress=False)
    ranked = [int(i) for i in ids[0]]

    def best(budget: int) -> tuple[str, str]:
        chosen: list[int] = []
        used = 0
        for i in ranked:
            if used + len(chunks[i]) + 6 > budget:
                break
            chosen.append(i)
            used += len(chunks[i]) + 6
        result.extra.update(chunks=len(chunks), retrieved=len(chosen))
        text = "\n[...]\n".join(chunks[i].strip("\n") for i in sorted(chosen))
        return text, ("\n[These are the passages of the text most relevant to the question, "
                      "in their original order.]")

    result.answer = _answer_over(backend, instance, config, best, result)
    return result


_NOTES_PROMPT = """\
You are reading a long text part by part to answer a question later.
Question: {question}

Notes so far:
{notes}

Part {part} of {parts}:
<text>
{text}
</text>

Rewrite the notes: keep everything from the notes and add every fact from this part that \
may help answer the question (exact names, numbers, IDs, dates; running counts). Reply with \
the notes only."""

_FINAL_PROMPT = """\
Question: {question}

Notes taken while reading the whole text:
{notes}

Answer the question from the notes. Reply with the answer only, no explanation."""


def summarize(instance: Instance, backend: LMBackend, config: MethodConfig) -> MethodResult:
    result = MethodResult(None)
    started = time.monotonic()
    fixed = _NOTES_PROMPT.format(question=instance.question, notes="", part=0, parts=0,
                                 text="")
    size = _input_chars(backend, config, fixed, 3 * config.summary_tokens)
    queue = _chunks(instance.context, max(1_000, size))
    notes, done = "(none yet)", 0
    while queue:
        if config.max_timeout is not None and time.monotonic() - started > config.max_timeout:
            result.stop_reason = "timeout"
            break
        chunk = queue.pop(0)
        prompt = _NOTES_PROMPT.format(question=instance.question, notes=notes,
                                      part=done + 1, parts=done + 1 + len(queue), text=chunk)
        try:
            notes = _ask(backend, prompt, config.summary_tokens, result) or notes
        except BackendError as exc:
            if not _too_long(exc) or len(chunk) < 2_000:
                raise
            queue[:0] = _chunks(chunk, len(chunk) // 2 + 1)
            continue
        done += 1
    result.extra["chunks"] = done
    result.answer = _ask(backend, _FINAL_PROMPT.format(question=instance.question, notes=notes),
                         config.max_output_tokens, result)
    result.stop_reason = result.stop_reason or "final"
    return result


Method = Callable[[Instance, LMBackend, MethodConfig], MethodResult]

METHODS: dict[str, Method] = {
    "base": base,
    "rlm": rlm,
    "rlm-no-sub": rlm_no_sub,
    "bm25": bm25,
    "summarize": summarize,
}


def run_method(name: str, instance: Instance, backend: LMBackend, config: MethodConfig
               ) -> MethodResult:
    """Run method ``name`` on ``instance``; ``latency_s`` is the wall-clock time it took."""
    started = time.monotonic()
    result = METHODS[name](instance, backend, config)
    result.latency_s = time.monotonic() - started
    result.extra.setdefault("window_tokens", window_tokens(backend, config))
    return result
