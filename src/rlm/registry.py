"""Name -> class maps for backends and environments.

Built-ins are registered as ``"module:Class"`` strings and imported only when looked up, so
registering never imports an SDK.  Third-party packages add entries through the entry-point
groups ``rlm.backends`` and ``rlm.environments`` (``name = "package.module:Class"``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from rlm.backends.base import LMBackend
from rlm.errors import (
    ConfigError,
    MissingDependencyError,
    UnknownBackendError,
    UnknownEnvironmentError,
)

__all__ = [
    "backend_from_spec",
    "backend_names",
    "create_backend",
    "create_environment",
    "environment_names",
    "get_backend_class",
    "get_environment_class",
    "get_executor_class",
    "register_backend",
    "register_environment",
]

_BACKENDS: dict[str, Any] = {
    "local": "rlm.backends.local:LocalBackend",
    "openai": "rlm.backends.openai_compat:OpenAIBackend",
    "scripted": "rlm.backends.scripted:ScriptedBackend",
    "anthropic": "rlm.backends.anthropic_messages:AnthropicBackend",
    "gemini": "rlm.backends.gemini_genai:GeminiBackend",
    "litellm": "rlm.backends.litellm_backend:LiteLLMBackend",
    "openrouter": "rlm.backends.preset_backends:OpenRouterBackend",
    "groq": "rlm.backends.preset_backends:GroqBackend",
    "together": "rlm.backends.preset_backends:TogetherBackend",
    "deepseek": "rlm.backends.preset_backends:DeepSeekBackend",
    "fireworks": "rlm.backends.preset_backends:FireworksBackend",
    "azure": "rlm.backends.preset_backends:AzureOpenAIBackend",
    "vllm": "rlm.backends.preset_backends:VLLMBackend",
    "ollama": "rlm.backends.preset_backends:OllamaBackend",
    "llamacpp": "rlm.backends.preset_backends:LlamaCppServerBackend",
}
_ENVIRONMENTS: dict[str, Any] = {
    "local": "rlm.environments.local:LocalEnvironment",
    "subprocess": "rlm.environments.subprocess_env:SubprocessEnvironment",
    "pyodide": "rlm.environments.pyodide_env:PyodideEnvironment",
    "docker": "rlm.environments.docker_env:DockerEnvironment",
    "remote-local": "rlm.environments.remote_local:LocalRemoteEnvironment",
    "modal": "rlm.environments.modal_env:ModalEnvironment",
    "e2b": "rlm.environments.e2b_env:E2BEnvironment",
    "daytona": "rlm.environments.daytona_env:DaytonaEnvironment",
    "prime": "rlm.environments.prime_env:PrimeEnvironment",
    "ipython": "rlm.environments.ipython:IPythonEnvironment",
    "sandbox": "rlm.environments.sandbox:SandboxEnvironment",
    "gvisor": "rlm.environments.gvisor:GVisorEnvironment",
}
#: Where ``RLM(executor=name)`` sends child RLMs and batch items ("local" is built in).
_EXECUTORS: dict[str, Any] = {
    "ray": "rlm.distributed:RayExecutor",
}
#: The extra that provides a built-in whose import fails.
_EXTRAS: dict[str, str] = {}
_plugins_loaded = False


def register_backend(name: str, cls: Any) -> None:
    """Register a backend class (or a ``"module:Class"`` string) under ``name``."""
    _BACKENDS[name] = cls


def register_environment(name: str, cls: Any) -> None:
    """Register an environment class (or a ``"module:Class"`` string) under ``name``."""
    _ENVIRONMENTS[name] = cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for group, table in (("rlm.backends", _BACKENDS), ("rlm.environments", _ENVIRONMENTS),
                         ("rlm.executors", _EXECUTORS)):
        for entry in entry_points(group=group):
            table.setdefault(entry.name, entry.value)


def _resolve(table: dict[str, Any], name: str, kind: str, error: type[ConfigError]) -> Any:
    _load_plugins()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise error(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}.{hint}")
    target = table[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = _EXTRAS.get(name, name)
            raise MissingDependencyError(
                f"the {kind} {name!r} needs an optional dependency ({exc.name}): "
                f"pip install 'rlm[{extra}]'"
            ) from exc
        target = table[name] = getattr(module, attr)
    return target


def get_backend_class(name: str) -> Any:
    """The backend class registered as ``name`` (``UnknownBackendError`` if none)."""
    return _resolve(_BACKENDS, name, "backend", UnknownBackendError)


def get_environment_class(name: str) -> Any:
    """The environment class registered as ``name`` (``UnknownEnvironmentError`` if none)."""
    return _resolve(_ENVIRONMENTS, name, "environment", UnknownEnvironmentError)


def get_executor_class(name: str) -> Any:
    """The executor class registered as ``name`` (``ConfigError`` if none)."""
    return _resolve(_EXECUTORS, name, "executor", ConfigError)


def backend_names() -> list[str]:
    _load_plugins()
    return sorted(_BACKENDS)


def environment_names() -> list[str]:
    _load_plugins()
    return sorted(_ENVIRONMENTS)


def create_backend(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Build the backend ``name``; ``model_name`` is accepted as an alias of ``model``."""
    options = dict(kwargs or {})
    if "model_name" in options and "model" not in options:
        options["model"] = options.pop("model_name")
    cls = get_backend_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad backend_kwargs for {name!r}: {exc}") from exc


def backend_from_spec(spec: Any, kwargs: Mapping[str, Any] | None = None, *,
                      what: str = "backend") -> tuple[LMBackend, bool]:
    """``(backend, created)`` for what ``RLM(backend=..., models={...})`` accepts: an
    ``LMBackend`` (used as it is; ``created`` False, its owner closes it), a registered name
    with ``kwargs``, or a mapping ``{"backend": name, **options}``."""
    if isinstance(spec, LMBackend):
        if kwargs:
            raise ConfigError(f"{what}_kwargs only apply when the {what} is given by name")
        return spec, False
    if isinstance(spec, str):
        return create_backend(spec, dict(kwargs or {})), True
    if isinstance(spec, Mapping):
        options = {**spec, **(kwargs or {})}
        kind = options.pop("backend", None)
        if not isinstance(kind, str):
            raise ConfigError(f"{what} {dict(spec)!r} needs a 'backend' name")
        return create_backend(kind, options), True
    raise ConfigError(f"{what} must be a registered name, a mapping with a 'backend' name "
                      f"or an LMBackend, not {spec!r}")


def create_environment(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Build the environment ``name`` with ``kwargs``."""
    cls = get_environment_class(name)
    try:
        return cls(**dict(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"bad environment_kwargs for {name!r}: {exc}") from exc
