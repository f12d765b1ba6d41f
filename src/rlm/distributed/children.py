"""Child RLMs as Ray tasks: ``RLM(..., executor="ray")`` runs each ``rlm_query`` child on
the cluster, against the tree's one ledger, with its trace events relayed to the driver.

The engine asks its ``ChildRunner`` for three things: a ledger for a new run
(``ledger``: a ``RemoteBudget`` over a new ``LedgerActor``), each child (``spawn``), and
the end of a run (``finish``: the ledger actor and the trace relay are ended).  A child's
context goes to the object store once (``ray.put``; the same object given to several
children is put once), and Ray moves it to each node that needs it once.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import ray

from rlm.core.limits import Ledger, Limits
from rlm.distributed.cluster import RayOptions, Recipe, connect
from rlm.distributed.ledger import RemoteBudget
from rlm.distributed.relay import RelayDrain
from rlm.errors import LimitExceeded, RemoteError, RLMError
from rlm.types import NodeRef

if TYPE_CHECKING:
    from rlm.core.engine import Run

__all__ = ["RayChildren", "SharedContexts", "await_task"]

#: Contexts at least this long go to the object store (smaller ones travel inline).
PUT_MIN_BYTES = 64 * 1024
#: How long a child whose tree stopped may take to wind down before it is killed.
GRACE_S = 3.0
#: The failures of Ray itself (not of the child's code) that fail one child cleanly.
_LOST = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
         ray.exceptions.ObjectLostError, ray.exceptions.TaskCancelledError,
         ray.exceptions.RaySystemError, ray.exceptions.OutOfMemoryError)


class SharedContexts:
    """Contexts put in the object store, once per distinct object (the same object given
    to several children or batch items is put once); small ones travel inline."""

    def __init__(self) -> None:
        self._puts: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def put(self, context: Any) -> Any:
        if context is None or _size(context) < PUT_MIN_BYTES:
            return context
        with self._lock:
            held = self._puts.get(id(context))
            if held is None or held[0] is not context:
                held = self._puts[id(context)] = (context, ray.put(context))
            return held[1]


class _RunState(SharedContexts):
    """Per run: its relay (and, on the driver, the drain) and the contexts put so far."""

    def __init__(self, relay: Any, drain: RelayDrain | None) -> None:
        super().__init__()
        self.relay, self.drain = relay, drain


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    try:
        return len(value) * 64  # a list or dict: assume it is worth sharing when long
    except TypeError:
        return 0


def await_task(ref: Any, ledger: Ledger, owner: str, what: str) -> Any:
    """The value of task ``ref``; when the tree stops first, the task gets ``GRACE_S`` to
    wind down and is then cancelled (killed if it must be).  A worker or node lost on the
    way is a ``RemoteError``, and everything ``owner`` held in the ledger is released.

    It blocks in ``ray.get`` (no polling), and the tree's stop cancels the task from
    ``on_stop``."""
    timers: list[threading.Timer] = []

    def stopped() -> None:
        timer = threading.Timer(GRACE_S, lambda: ray.cancel(ref, force=True, recursive=True))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    remove = ledger.on_stop(stopped)
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        _release(ledger, owner)
        cause = exc.cause
        if isinstance(cause, RLMError | LimitExceeded):
            raise cause from None
        if isinstance(cause, _LOST):
            raise _lost(ledger, what, cause) from exc
        raise RemoteError(f"{what} failed on the cluster: {type(cause).__name__}: "
                          f"{cause}") from exc
    except _LOST as exc:
        _release(ledger, owner)
        raise _lost(ledger, what, exc) from exc
    finally:
        remove()
        for timer in timers:
            timer.cancel()


def _lost(ledger: Ledger, what: str, exc: BaseException) -> RLMError:
    """Why a task was lost: the tree's stop when it was cancelled for it, else its death."""
    reason = ledger.tripped
    if reason is not None:
        return type(reason)(str(reason))
    return RemoteError(f"{what} was lost: its worker or node died ({type(exc).__name__})")


def _release(ledger: Ledger, owner: str) -> None:
    if isinstance(ledger, RemoteBudget):
        # The ledger may be gone with the cluster: then nothing is left to release.
        with contextlib.suppress(Exception):
            ledger.release_owner(owner)


class RayChildren:
    """The engine's ``ChildRunner`` for ``executor="ray"``."""

    def __init__(self, recipe: Recipe, options: RayOptions) -> None:
        self.recipe, self.options = recipe, options
        self._recipe_ref: Any = None
        self._states: dict[int, _RunState] = {}
        self._lock = threading.Lock()

    def _recipe(self) -> Any:
        with self._lock:
            if self._recipe_ref is None:
                self._recipe_ref = ray.put(self.recipe)
            return self._recipe_ref

    def ledger(self, limits: Limits) -> Ledger:
        connect(self.options)
        return RemoteBudget.create(limits)

    def adopt(self, run: Run, relay: Any) -> None:
        """A run on a worker: its children's events go to the driver's ``relay``."""
        with self._lock:
            self._states[id(run)] = _RunState(relay, None)

    def forget(self, run: Run) -> None:
        with self._lock:
            self._states.pop(id(run), None)

    def _state(self, run: Run) -> _RunState:
        with self._lock:
            state = self._states.get(id(run))
            if state is None:
                drain = RelayDrain.create(run.tracer)
                state = self._states[id(run)] = _RunState(drain.relay, drain)
            return state

    def spawn(self, run: Run, node: NodeRef, prompt: str, context: Any,
              schema: dict[str, Any] | None) -> str:
        from rlm.distributed.worker import run_child

        budget = run.budget
        if not isinstance(budget, RemoteBudget):  # a batch item's tree: it stays here
            return run.run_child(node, prompt, context, schema)
        state = self._state(run)
        handle = budget.handle.below(node.run_id)
        options = self.options.task_options()
        if state.drain is None:  # this run is a remote child (adopted on its worker)
            # Spawned by a remote child, which holds its CPU while it waits here (Ray lends
            # a blocked task's CPU only from its main thread): its children run within
            # that share, so a tree deeper than the cluster is wide cannot deadlock.
            options["num_cpus"] = 0
        ref = run_child.options(**options).remote(
            self._recipe(), handle, state.relay, node, prompt, state.put(context), schema)
        try:
            return str(await_task(ref, budget, handle.owner, f"child RLM {node.run_id}"))
        finally:
            if state.drain is not None:
                state.drain.drain()

    def finish(self, run: Run) -> None:
        """The run is over: end its relay and its ledger's actor."""
        with self._lock:
            state = self._states.pop(id(run), None)
        if state is not None and state.drain is not None:
            state.drain.close()
        if isinstance(run.budget, RemoteBudget):
            run.budget.shutdown()
