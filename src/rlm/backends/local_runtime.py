"""The pieces the embedded model runs on: one copy of the weights, KV contexts over it.

``Runtime`` loads a GGUF once (``llama_cpp._internals.LlamaModel``) and tokenises,
detokenises and builds samplers for every request.  A ``KVContext`` is one llama.cpp
context over that model holding ``slots`` sequences, each in its own KV *stream* of
``window`` cells (``kv_unified=False``): a conversation lane is a context with one slot,
the one-shot batch is a context with several.  ``Generation`` turns sampled tokens into
the reply text exactly as ``Llama.create_completion`` does (end-of-generation tokens,
stop strings, the token budget, incomplete UTF-8 held back).

Why several contexts over one ``LlamaModel``, and one KV *stream* per sequence: the
weights are mapped once (a ``Llama`` per lane mapped and paged them in once per lane;
see docs/benchmarks.md for the memory), a conversation keeps its own full-window cache
that one-shot calls never evict, and the one-shot calls share one context whose streams
are decoded together.  A unified KV cache (one pool of cells for all sequences) was
measured and rejected: a sequence's cells then interleave with the others', attention
sums in another order, and two sequences decoded together already moved a logit by 0.38
(0.0 with a stream each), enough to change a reply at temperature 0 where two tokens
nearly tie.  With a stream each, what remains is the matrix kernels: llama.cpp's CPU
kernels (this build) take 4 tokens at a time once a decode call carries 4 or more, so a
call of at most 3 tokens computes each bit for bit as a call of one (measured) and a
larger one does not; see ``local_engine.EXACT_ROWS``.  What also changes logits, as it
always did, is where a prompt is split into decode calls (a cached prefix): each prompt
is read on its own, from the end of the prefix it reuses, in chunks of ``N_BATCH``
tokens, exactly as ``Llama`` reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlm.errors import BackendError, ConfigError, MissingDependencyError

__all__ = ["N_BATCH", "Generation", "KVContext", "Runtime", "import_llama",
           "without_weight_repacking"]

#: Tokens per decode call while a prompt is read (``Llama``'s ``n_batch``).
N_BATCH = 512
#: What ``Llama``'s sampler uses: repeat penalty window and top-k/top-p/min-p at T > 0.
_PENALTY_LAST_N = 64
_BACKEND_LOCK = threading.Lock()
_backend_ready = False


def import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            "the local backend needs llama-cpp-python: pip install 'rlm[local]'"
        ) from exc
    return llama_cpp


class Runtime:
    """One loaded GGUF: the weights (once), the vocabulary and the chat template."""

    def __init__(self, path: Path, *, verbose: bool = False) -> None:
        llama_cpp = import_llama()
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        global _backend_ready
        with _BACKEND_LOCK:
            if not _backend_ready:
                llama_cpp.llama_backend_init()
                _backend_ready = True
        set_verbose(verbose)
        self._ll = llama_cpp.llama_cpp
        self._internals = _internals
        self.verbose = verbose
        with without_weight_repacking(llama_cpp):
            params = self._ll.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_mmap = True
        params.use_mlock = False
        try:
            self.model = _internals.LlamaModel(path_model=str(path), params=params,
                                               verbose=verbose)
        except ValueError as exc:
            raise BackendError(f"could not load the local model {path}: {exc}") from exc
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._pieces: dict[int, bytes] = {}
        self.formatter = self._make_formatter()

    def _make_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError("the GGUF file has no chat template")
        eos = self.model.token_get_text(self.model.token_eos())
        bos = self.model.token_get_text(self.model.token_bos())
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    # -- text -------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def piece(self, token: int) -> bytes:
        """The bytes of one token, as ``Llama.detokenize`` writes them (no special text)."""
        cached = self._pieces.get(token)
        if cached is None:
            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = self._ll.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
                if n <= size:
                    break
                size = n
            cached = self._pieces[token] = buffer.raw[:max(n, 0)]
        return cached

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    # -- sampling ---------------------------------------------------------------------------
    def sampler(self, *, temperature: float, repeat_penalty: float, seed: int,
                grammar: str | None) -> Any:
        """The sampler chain ``Llama`` builds for a completion with these settings."""
        sampler = self._internals.LlamaSampler()
        sampler.add_penalties(self.n_vocab, _PENALTY_LAST_N, repeat_penalty, 0.0, 0.0)
        if grammar:
            constraint = self._ll.llama_sampler_init_grammar(
                self.vocab, grammar.encode("utf-8"), b"root")
            if not constraint:
                sampler.close()
                raise ConfigError("invalid GBNF grammar (llama.cpp could not parse it)")
            self._ll.llama_sampler_chain_add(sampler.sampler, constraint)
        if temperature < 0.0:
            sampler.add_dist(seed)
        elif temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(40)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(0.95, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(temperature)
            sampler.add_dist(seed)
        return sampler

    def close(self) -> None:
        self.model.close()


class KVContext:
    """A llama.cpp context over the shared model: ``slots`` sequences, a stream each.

    ``cached[slot]`` is the token list whose KV entries the slot's stream holds, in
    position order: what a later prompt can reuse.  Every call here happens on the
    engine thread.
    """

    def __init__(self, runtime: Runtime, *, slots: int, window: int, n_threads: int) -> None:
        ll = runtime._ll
        params = ll.llama_context_default_params()
        params.n_ctx = slots * window
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as ``Llama`` does
        params.rope_scaling_type = ll.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
        params.pooling_type = ll.LLAMA_POOLING_TYPE_UNSPECIFIED
        params.yarn_ext_factor = -1.0
        self._ll = ll
        try:
            self._ctx = runtime._internals.LlamaContext(model=runtime.model, params=params,
                                                        verbose=runtime.verbose)
        except ValueError as exc:
            raise BackendError(f"llama.cpp could not create a context: {exc}") from exc
        self._batch = runtime._internals.LlamaBatch(
            n_tokens=max(N_BATCH, slots), embd=0, n_seq_max=1, verbose=runtime.verbose)
        self.slots = slots
        self.window = ll.llama_n_ctx(self._ctx.ctx) // slots
        self.cached: list[list[int]] = [[] for _ in range(slots)]

    def keep(self, slot: int, n: int) -> None:
        """Drop the slot's KV entries from position ``n`` on."""
        if n < len(self.cached[slot]):
            self._ll.llama_memory_seq_rm(self._ctx.memory, slot, n, -1)
            del self.cached[slot][n:]

    def copy(self, source: int, slot: int, n: int) -> None:
        """Give ``slot`` the first ``n`` entries of ``source`` (a copy of its stream)."""
        self._ll.llama_memory_seq_cp(self._ctx.memory, source, slot, -1, -1)
        self.cached[slot] = list(self.cached[source])
        self.keep(slot, n)

    def decode(self, items: Sequence[tuple[int, int, bool]]) -> None:
        """Decode ``(slot, token, wants_logits)`` items, each at its slot's next position."""
        batch = self._batch.batch
        for i, (slot, token, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = len(self.cached[slot])
            batch.seq_id[i][0] = slot
            batch.n_seq_id[i] = 1
            batch.logits[i] = logits
            self.cached[slot].append(token)
        batch.n_tokens = len(items)
        code = self._ll.llama_decode(self._ctx.ctx, batch)
        if code != 0:
            for slot in {slot for slot, _, _ in items}:  # its state is unknown: start over
                self._ll.llama_memory_seq_rm(self._ctx.memory, slot, 0, -1)
                self.cached[slot] = []
            raise BackendError(f"llama.cpp could not decode the batch (llama_decode "
                               f"returned {code})")

    def sample(self, sampler: Any, index: int) -> int:
        """Sample (and accept) the next token from the logits of batch item ``index``."""
        return int(self._ll.llama_sampler_sample(sampler.sampler, self._ctx.ctx, index))

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


class Generation:
    """The reply being generated for one request, ``Llama.create_completion``'s rules.

    ``add(token)`` takes each sampled token and says whether the reply is finished: at an
    end-of-generation token (not part of the text), when a stop string appears (the text
    is cut before it) or after ``max_tokens`` tokens; a token that leaves a UTF-8
    character incomplete is never the last one.  With ``choices`` (the reply is one of
    these JSON texts, a grammar keeps it so), the reply is finished as soon as its text
    (whitespace between JSON tokens aside) starts only one of them, and is that choice:
    the grammar would force the rest, so a label costs a few tokens, not all of them.
    """

    def __init__(self, runtime: Runtime, max_tokens: int, stop: Sequence[str],
                 choices: Sequence[str] = ()) -> None:
        self._runtime = runtime
        self.max_tokens = max_tokens
        self._stops = [s.encode("utf-8") for s in stop if s]
        self._choices = [c.encode("utf-8") for c in choices]
        self.tokens: list[int] = []
        self._bytes = b""
        self._multibyte = 0
        self.text: bytes | None = None  # set when finished

    @property
    def finished(self) -> bool:
        return self.text is not None

    def add(self, token: int) -> bool:
        if self._runtime.is_eog(token):
            return self.finish()
        self.tokens.append(token)
        self._bytes += self._runtime.piece(token)
        every = self._bytes
        for k, char in enumerate(every[-3:]):  # Llama's check for a character cut short
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte = num - k
        if self._multibyte > 0:
            self._multibyte -= 1
            return False
        if self._choices:
            start = _squeezed(every)
            left = [c for c in self._choices if c.startswith(start)]
            if len(left) == 1:
                self.text = left[0]
                return True
        hits = [s for s in self._stops if s in every]
        if hits:
            self.text = every[: every.index(hits[0])]
            return True
        if len(self.tokens) >= self.max_tokens:
            return self.finish()
        return False

    def finish(self) -> bool:
        if self.text is None:
            self.text = self._bytes
        return True

    def reply(self) -> str:
        return (self.text if self.text is not None else self._bytes).decode(
            "utf-8", errors="ignore")


def _squeezed(text: bytes) -> bytes:
    """JSON text without the whitespace between its tokens (strings kept as they are)."""
    out = bytearray()
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # a backslash: the next byte is part of the string
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte in b" \t\r\n":
            continue
        else:
            in_string = byte == 0x22
        out.append(byte)
    return bytes(out)


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
