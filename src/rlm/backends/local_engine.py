"""The scheduler of the embedded model: one thread runs every llama.cpp call.

Callers (``LocalBackend.complete``, from any thread) hand a ``Job`` to the ``Engine`` and
wait for it.  The engine thread admits jobs, reads their prompts and generates for all of
them at once:

- a turn of a conversation (``cache_key``) runs in that conversation's *lane*: a context
  of its own with one full-window KV stream (LRU, ``lanes`` of them), so the next turn
  only reads its new tokens even when sub-calls ran in between;
- a one-shot call that fits the batch window runs in one of the ``parallel`` slots of the
  *batch* context, where the generating slots advance together: one token each per
  round, several slots per decode call (one pass over the weights for all of them: what
  makes concurrent sub-calls faster than one after the other).  ``exact`` keeps each
  reply the one the call gets alone: at most ``EXACT_ROWS`` slots a decode call and each
  prompt read on its own; otherwise every generating slot goes into one decode call and
  prompts are read several to a call.  A call too long for the batch window runs in the
  ``_oneshot`` lane.

Each prompt is read on its own, from the end of the longest cached prefix any slot of
its context holds (the stream is copied over when that slot is another one's), in chunks
of ``N_BATCH`` tokens.  A slot keeps its tokens after its call, for the next prompt that
shares them.  A job that shares a longer prefix with a prompt still being read than with
anything cached waits for it (``llm_query_batched`` prompts often share a preamble).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm.backends.local_runtime import N_BATCH, Generation, KVContext, Runtime
from rlm.errors import BackendError, Cancelled

__all__ = ["Engine", "Job"]

#: Copy another slot's stream only when it saves at least this many prompt tokens.
_MIN_COPY_GAIN = 4
#: The most tokens a decode call may carry for each to be computed exactly as in a call
#: of its own: llama.cpp's CPU matrix kernels (this build, x86) take 4 tokens at a time
#: from 4 on, which changes the last bits of every logit.
EXACT_ROWS = 3
ONESHOT_LANE = "_oneshot"


@dataclass(eq=False)
class Job:
    """One request on its way through the engine (the prompt already tokenised)."""

    tokens: list[int]
    generation: Generation
    sampler: Any
    lane: str | None  # a conversation key, or None for a one-shot call
    cancel: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    reused: int = 0  # prompt tokens served from the cache
    # engine state
    context: KVContext | None = None
    slot: int = -1
    read: int = 0  # prompt tokens whose KV entries exist
    pending: int | None = None  # the sampled token to decode next

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """The thread that owns the contexts and decodes for every job."""

    def __init__(self, runtime: Runtime, *, n_ctx: int, n_threads: int, lanes: int,
                 parallel: int, batch_window: int, exact: bool = True) -> None:
        self.runtime = runtime
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.lanes = max(1, lanes)
        self.parallel = parallel
        self.batch_window = batch_window
        self.exact = exact
        self._cond = threading.Condition()
        self._incoming: list[Job] = []
        self._calls: list[Callable[[], None]] = []
        self._waiting: list[Job] = []
        self._active: list[Job] = []
        self._lanes: OrderedDict[str, KVContext] = OrderedDict()
        self._batch: KVContext | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- callers' side ----------------------------------------------------------------------
    def fits_batch(self, tokens: int, budget: int) -> bool:
        return self.parallel > 1 and tokens + budget + 8 <= self.batch_window

    def submit(self, job: Job) -> None:
        self._enqueue("_incoming", job)

    def prepare(self) -> None:
        """Create the context one-shot calls use now rather than at the first call."""
        self.call(lambda: self._batch_context() if self.parallel > 1
                  else self._lane_context(ONESHOT_LANE))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine thread (between two decode calls) and return its value."""
        done, result = threading.Event(), []

        def run() -> None:
            try:
                if self._closing:
                    raise BackendError("the local model is closed")
                result.append((True, fn()))
            except Exception as exc:
                result.append((False, exc))
            done.set()

        self._enqueue("_calls", run)
        done.wait()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def _enqueue(self, queue: str, item: Any) -> None:
        """Hand ``item`` to the engine thread (started on first use) through the list
        ``queue`` names (looked up under the lock: the engine thread swaps them)."""
        with self._cond:
            if self._closing:
                raise BackendError("the local model is closed")
            getattr(self, queue).append(item)
            self._ensure_thread()
            self._cond.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rlm-local-engine",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        for job in [*self._incoming, *self._waiting, *self._active]:
            self._fail(job, BackendError("the local model was closed during the call"))
        self._incoming.clear()
        self._waiting.clear()
        for call in self._calls:
            call()  # each fails: the model is closed
        self._calls.clear()
        for context in [*self._lanes.values(), *([self._batch] if self._batch else [])]:
            context.close()
        self._lanes.clear()
        self._batch = None

    # -- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._incoming or self._calls or self._waiting or self._active
                           or self._closing):
                    self._cond.wait()
                if self._closing:
                    return
                self._waiting.extend(self._incoming)
                self._incoming.clear()
                calls, self._calls = self._calls, []
            for call in calls:
                call()
            try:
                self._iterate()
            except Exception as exc:  # never leave a caller waiting
                error = exc if isinstance(exc, BackendError) else BackendError(
                    f"the local model failed: {exc!r}")
                for job in [*self._waiting, *self._active]:
                    self._fail(job, error)
                self._waiting.clear()

    def _iterate(self) -> None:
        self._admit()
        reading: list[Job] = []
        for job in list(self._active):
            if job.cancelled:
                self._finish(job)
            elif job.pending is None:
                reading.append(job)
        for group in self._read_groups(reading):  # one chunk of each prompt a round
            self._read(group)
        generating: dict[int, tuple[KVContext, list[Job]]] = {}
        for job in self._active:
            if job.pending is not None and job.context is not None:
                generating.setdefault(id(job.context), (job.context, []))[1].append(job)
        for context, jobs in generating.values():
            for group in self._step_groups(jobs):
                self._step(context, group)

    def _read_groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Exact: each prompt read on its own.  Else: chunks packed into decode calls."""
        if self.exact:
            return [[job] for job in jobs]
        groups: list[list[Job]] = []
        size = 0
        for job in jobs:
            n = min(N_BATCH, len(job.tokens) - job.read)
            if groups and groups[-1][0].context is job.context and size + n <= N_BATCH:
                groups[-1].append(job)
                size += n
            else:
                groups.append([job])
                size = n
        return groups

    def _step_groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Runs of slots decoded together: at most ``EXACT_ROWS`` slots wide when exact."""
        rows = EXACT_ROWS if self.exact else N_BATCH
        groups: list[list[Job]] = []
        for job in sorted(jobs, key=lambda job: job.slot):
            if groups and job.slot - groups[-1][0].slot < rows:
                groups[-1].append(job)
            else:
                groups.append([job])
        return groups

    def _admit(self) -> None:
        for job in list(self._waiting):
            if job.cancelled:
                self._waiting.remove(job)
                self._fail(job, Cancelled("the call tree is stopping"))
            elif self._place(job):
                self._waiting.remove(job)
                self._active.append(job)

    def _place(self, job: Job) -> bool:
        """Give ``job`` a slot and its cached prefix, or leave it waiting (False)."""
        if job.lane is None:
            if self.fits_batch(len(job.tokens), job.generation.max_tokens):
                return self._place_in_batch(job)
            job.lane = ONESHOT_LANE
        if any(other.lane == job.lane for other in self._active):
            return False  # one turn at a time per conversation
        context = self._lane_context(job.lane)
        if context is None:
            return False
        self._start(job, context, 0, _common(context.cached[0], job.tokens))
        return True

    def _place_in_batch(self, job: Job) -> bool:
        context = self._batch_context()
        busy = {other.slot for other in self._active if other.context is context}
        free = [slot for slot in range(context.slots) if slot not in busy]
        if not free:
            return False
        shared = [_common(context.cached[slot], job.tokens) for slot in range(context.slots)]
        best = max(range(context.slots), key=lambda slot: shared[slot])
        for other in self._active:  # a prompt still being read shares more: wait for it
            if (other.context is context and other.pending is None
                    and _common(other.tokens, job.tokens) >= shared[best] + _MIN_COPY_GAIN):
                return False
        own = max(free, key=lambda slot: (shared[slot], -slot))
        if best not in free and shared[best] >= shared[own] + _MIN_COPY_GAIN:
            context.copy(best, own, shared[best])
            shared[own] = shared[best]
        self._start(job, context, own, shared[own])
        return True

    def _start(self, job: Job, context: KVContext, slot: int, shared: int) -> None:
        reuse = min(shared, len(job.tokens) - 1)  # the last token is read for its logits
        context.keep(slot, reuse)
        job.context, job.slot, job.read, job.reused = context, slot, reuse, reuse

    def _lane_context(self, key: str) -> KVContext | None:
        if key in self._lanes:
            self._lanes.move_to_end(key)
            return self._lanes[key]
        if len(self._lanes) >= self.lanes:
            busy = {id(job.context) for job in self._active}
            idle = [k for k, ctx in self._lanes.items() if id(ctx) not in busy]
            if not idle:
                return None
            context = self._lanes.pop(idle[0])  # the least recently used idle lane
        else:
            context = KVContext(self.runtime, slots=1, window=self.n_ctx,
                                n_threads=self.n_threads)
        self._lanes[key] = context
        return context

    def _batch_context(self) -> KVContext:
        if self._batch is None:
            self._batch = KVContext(self.runtime, slots=self.parallel,
                                    window=self.batch_window, n_threads=self.n_threads)
        return self._batch

    def _read(self, jobs: list[Job]) -> None:
        """Decode the next chunk of each prompt; after a prompt's last, sample its first token."""
        context = jobs[0].context
        assert context is not None
        items: list[tuple[int, int, bool]] = []
        marks: list[tuple[Job, int, int | None]] = []
        for job in jobs:
            chunk = job.tokens[job.read: job.read + N_BATCH]
            last = job.read + len(chunk) == len(job.tokens)
            items += [(job.slot, token, last and i == len(chunk) - 1)
                      for i, token in enumerate(chunk)]
            marks.append((job, len(chunk), len(items) - 1 if last else None))
        try:
            context.decode(items)
        except BackendError as exc:
            for job in jobs:
                self._fail(job, exc)
            return
        for job, n, index in marks:
            job.read += n
            if index is not None:
                self._sampled(job, context.sample(job.sampler, index))

    def _step(self, context: KVContext, jobs: list[Job]) -> None:
        """One token for each of ``jobs`` (slots of ``context``), in one decode call.

        Streams go into a decode call as a run of consecutive sequence ids, so a slot in
        between that is not generating gets a placeholder token, removed right after.
        """
        by_slot = {job.slot: job for job in jobs}
        items: list[tuple[int, int, bool]] = []
        fillers: list[tuple[int, int]] = []
        for slot in range(min(by_slot), max(by_slot) + 1):
            job = by_slot.get(slot)
            if job is not None:
                assert job.pending is not None
                items.append((slot, job.pending, True))
                continue
            if len(context.cached[slot]) >= context.window:
                context.keep(slot, context.window - 1)
            fillers.append((slot, len(context.cached[slot])))
            items.append((slot, 0, False))
        try:
            context.decode(items)
        except BackendError as exc:
            for job in jobs:
                self._fail(job, exc)
            return
        finally:
            for slot, n in fillers:
                context.keep(slot, n)
        for index, (slot, _, wanted) in enumerate(items):
            if wanted:
                job = by_slot[slot]
                job.pending = None
                self._sampled(job, context.sample(job.sampler, index))

    def _sampled(self, job: Job, token: int) -> None:
        context = job.context
        assert context is not None
        if job.generation.add(token) or job.cancelled:
            self._finish(job)
        elif len(context.cached[job.slot]) >= context.window:
            job.generation.finish()  # the stream is full (the budget left room for it)
            self._finish(job)
        else:
            job.pending = token

    def _finish(self, job: Job) -> None:
        job.generation.finish()
        job.pending = None
        if job in self._active:
            self._active.remove(job)
        job.done.set()

    def _fail(self, job: Job, error: BaseException) -> None:
        job.error = error
        if job in self._active:
            self._active.remove(job)
        job.done.set()
