"""Every exception rlm raises, in one tree.

    RLMError
    ├── ConfigError                 bad arguments; fix the call (CLI exit code 2)
    │   ├── UnknownBackendError
    │   ├── UnknownEnvironmentError
    │   ├── UnknownModelError
    │   ├── MissingDependencyError
    │   └── MissingKeyError
    ├── BackendError                the language model could not answer (exit code 1)
    │   ├── RateLimitError
    │   ├── BackendTimeoutError
    │   ├── BackendConnectionError
    │   └── BadResponseError
    ├── EnvError                    the REPL environment failed, not the model's code
    │   ├── EnvStartError
    │   └── BridgeProtocolError
    ├── LimitExceeded               a shared limit of the call tree was reached (exit code 3)
    │   ├── IterationLimitExceeded
    │   ├── BudgetExceeded
    │   ├── TimeLimitExceeded
    │   ├── TokenLimitExceeded
    │   └── ErrorLimitExceeded
    └── Cancelled                   the run was cancelled by its caller

Errors in the model's own code are not exceptions of the library: they are fed back to the
model as text (``ExecResult.error``).  ``LimitExceeded`` is what a helper such as
``llm_query`` raises inside the REPL when the tree has run out of something; ``completion()``
itself turns limits into a result with a matching ``stop_reason`` instead of raising.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BackendTimeoutError",
    "BadResponseError",
    "BridgeProtocolError",
    "BudgetExceeded",
    "Cancelled",
    "ConfigError",
    "EnvError",
    "EnvStartError",
    "ErrorLimitExceeded",
    "IterationLimitExceeded",
    "LimitExceeded",
    "MissingDependencyError",
    "MissingKeyError",
    "RLMError",
    "RateLimitError",
    "TimeLimitExceeded",
    "TokenLimitExceeded",
    "UnknownBackendError",
    "UnknownEnvironmentError",
    "UnknownModelError",
]


class RLMError(Exception):
    """Base class of every error raised by rlm.

    ``partial`` holds the ``RLMResult`` built so far when a run ends with this error
    (answer, usage and trace are never lost); ``run_id`` and ``depth`` say where it happened.
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.run_id: str | None = context.pop("run_id", None)
        self.depth: int | None = context.pop("depth", None)
        self.partial: Any = context.pop("partial", None)
        for key, value in context.items():
            setattr(self, key, value)


class ConfigError(RLMError):
    """The arguments cannot work: unknown name, missing key or dependency, bad value."""

    exit_code = 2


class UnknownBackendError(ConfigError):
    """No backend is registered under that name."""


class UnknownEnvironmentError(ConfigError):
    """No environment is registered under that name."""


class UnknownModelError(ConfigError):
    """``llm_query(model=...)`` named a model that was not registered."""


class MissingDependencyError(ConfigError):
    """An optional extra is needed; the message says which ``pip install`` fixes it."""


class MissingKeyError(ConfigError):
    """A remote backend needs an API key and none was found."""


class BackendError(RLMError):
    """The language model backend failed to produce a completion."""


class RateLimitError(BackendError):
    """The provider kept answering 429 after every retry."""


class BackendTimeoutError(BackendError):
    """The provider did not answer within the request timeout."""


class BackendConnectionError(BackendError):
    """The provider could not be reached or dropped the connection."""


class BadResponseError(BackendError):
    """The provider answered with an error status or a malformed body."""


class EnvError(RLMError):
    """The REPL environment itself failed (not the model's code)."""


class EnvStartError(EnvError):
    """The environment could not be started."""


class BridgeProtocolError(EnvError):
    """A message between the environment and the LM handler was malformed or refused."""


class RemoteError(RLMError):
    """Work sent to a cluster failed there: its worker or node died, or it was lost."""


class LimitExceeded(RLMError):
    """A limit shared by the whole call tree was reached.

    ``stop_reason`` is the value ``RLMResult.stop_reason`` takes when a run ends on it.
    """

    exit_code = 3
    stop_reason: ClassVar[str] = "limit"


class IterationLimitExceeded(LimitExceeded):
    """``max_iterations`` REPL turns have been used across the tree."""

    stop_reason = "max_iterations"


class BudgetExceeded(LimitExceeded):
    """``max_budget`` USD is spent, or the next call would not fit in what is left."""

    stop_reason = "budget"


class TimeLimitExceeded(LimitExceeded):
    """``max_timeout`` seconds have passed since the root call started."""

    stop_reason = "timeout"


class TokenLimitExceeded(LimitExceeded):
    """``max_tokens`` input + output tokens are used, or the next call would not fit."""

    stop_reason = "tokens"


class ErrorLimitExceeded(LimitExceeded):
    """``max_errors`` code blocks have failed across the tree."""

    stop_reason = "errors"


class Cancelled(RLMError):
    """The caller cancelled the run (``RLM.cancel()``)."""

    exit_code = 130
    stop_reason: ClassVar[str] = "cancelled"
