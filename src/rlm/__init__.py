"""rlm: Recursive Language Models.

``RLM(...).completion(prompt)`` puts a long input into a Python REPL as ``context`` and lets
the model read it with code and recursive sub-calls.  See ``docs/`` for the concepts.
"""

from rlm.api import RLM
from rlm.backends.base import LMBackend
from rlm.core.limits import Budget, Limits
from rlm.environments.base import Environment
from rlm.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadResponseError,
    BridgeProtocolError,
    BudgetExceeded,
    Cancelled,
    ConfigError,
    EnvError,
    EnvStartError,
    ErrorLimitExceeded,
    IterationLimitExceeded,
    LimitExceeded,
    MissingDependencyError,
    MissingKeyError,
    RateLimitError,
    RLMError,
    TimeLimitExceeded,
    TokenLimitExceeded,
    UnknownBackendError,
    UnknownEnvironmentError,
    UnknownModelError,
)
from rlm.result import RLMResult
from rlm.types import (
    Answer,
    Completion,
    CompletionRequest,
    ExecResult,
    ModelUsage,
)

__version__ = "0.1.0"

__all__ = [
    "RLM",
    "Answer",
    "BackendConnectionError",
    "BackendError",
    "BackendTimeoutError",
    "BadResponseError",
    "BridgeProtocolError",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "Completion",
    "CompletionRequest",
    "ConfigError",
    "EnvError",
    "EnvStartError",
    "Environment",
    "ErrorLimitExceeded",
    "ExecResult",
    "IterationLimitExceeded",
    "LMBackend",
    "LimitExceeded",
    "Limits",
    "MissingDependencyError",
    "MissingKeyError",
    "ModelUsage",
    "RLMError",
    "RLMResult",
    "RateLimitError",
    "TimeLimitExceeded",
    "TokenLimitExceeded",
    "UnknownBackendError",
    "UnknownEnvironmentError",
    "UnknownModelError",
]
