"""rlm: Recursive Language Models.

``RLM(...).completion(prompt)`` puts a long input into a Python REPL as ``context`` and lets
the model read it with code and recursive sub-calls.  See ``docs/`` for the concepts.
"""

from rlm.api import RLM
from rlm.backends.base import LMBackend
from rlm.backends.scripted import ScriptedBackend
from rlm.core.limits import Budget, Limits
from rlm.core.loop import LoopConfig
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
from rlm.trace import TraceNode, TraceSink
from rlm.trace import load as load_trace
from rlm.types import (
    Answer,
    Completion,
    CompletionRequest,
    ExecResult,
    Message,
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
    "LoopConfig",
    "Message",
    "MissingDependencyError",
    "MissingKeyError",
    "ModelUsage",
    "RLMError",
    "RLMResult",
    "RateLimitError",
    "ScriptedBackend",
    "TimeLimitExceeded",
    "TokenLimitExceeded",
    "TraceNode",
    "TraceSink",
    "UnknownBackendError",
    "UnknownEnvironmentError",
    "UnknownModelError",
    "load_trace",
]
