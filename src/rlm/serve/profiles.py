"""What a server offers: named RLM profiles (root model, sub model, environment, limits),
read from the command line's model options or a config file, and the backends they share.

A config file (TOML, or JSON with the same shape) lists more profiles::

    [profiles.deep]
    backend = "openai"
    model = "gpt-5-mini"
    sub_model = "gpt-5-nano"
    env = "sandbox"
    max_depth = 2
    max_budget = 0.50
    max_timeout = 300

    [profiles.deep.backend_options]     # more keyword arguments for the backend
    price_per_mtok = [0.25, 2.0]

Keys: ``backend``, ``model``, ``base_url``, ``sub_backend``, ``sub_model``, ``env``, the six
limits (``max_depth``, ``max_iterations``, ``max_budget``, ``max_timeout``, ``max_tokens``,
``max_errors``), ``script`` (a JSON list of replies for the scripted backend, relative to
the file), ``description``, and the tables ``backend_options``, ``sub_backend_options`` and
``env_options``.  A profile's limits are both the defaults of its requests and their caps.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm import registry
from rlm.api import RLM
from rlm.backends.base import LMBackend
from rlm.core.limits import Limits
from rlm.errors import ConfigError
from rlm.trace.sinks import TraceSink

__all__ = ["LIMIT_NAMES", "Catalog", "Profile", "load_profiles", "profile_from_options"]

#: The per-request limits a client may lower (never raise past its profile's).
LIMIT_NAMES = ("max_depth", "max_iterations", "max_budget", "max_timeout", "max_tokens",
               "max_errors")
_KEYS = {"backend", "model", "base_url", "sub_backend", "sub_model", "env", "script",
         "description", "backend_options", "sub_backend_options", "env_options", *LIMIT_NAMES}
#: Backends built anew for every request: a scripted backend replays its script each time.
_PER_REQUEST = {"scripted"}


@dataclass(frozen=True)
class Profile:
    """One model id of the server: how a request naming it is answered.

    ``backend`` / ``backend_kwargs`` name the root model as ``RLM(backend, backend_kwargs)``
    does; ``sub_backend`` is a spec ``{"backend": name, **options}`` or ``None``;
    ``limits`` are the defaults and the caps of every request.
    """

    name: str
    backend: str
    backend_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sub_backend: Mapping[str, Any] | None = None
    environment: str = "local"
    environment_kwargs: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    description: str = ""

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` and the MCP server say about this profile (no secrets)."""
        sub = self.sub_backend
        return {
            "backend": self.backend,
            "model": self.backend_kwargs.get("model"),
            "sub_backend": None if sub is None else {"backend": sub.get("backend"),
                                                     "model": sub.get("model")},
            "environment": self.environment,
            "limits": {name: getattr(self.limits, name) for name in LIMIT_NAMES},
            "description": self.description,
        }


def profile_from_options(name: str, options: Mapping[str, Any], *,
                         base_dir: Path | None = None) -> Profile:
    """A ``Profile`` from one config-file table (see the module docstring)."""
    unknown = sorted(set(options) - _KEYS)
    if unknown:
        raise ConfigError(f"profile {name!r}: unknown key {unknown[0]!r}; known: "
                          f"{', '.join(sorted(_KEYS))}")
    backend = options.get("backend")
    if not isinstance(backend, str):
        raise ConfigError(f"profile {name!r} needs a backend name (backend = \"openai\")")
    kwargs = {**_table(name, options, "backend_options")}
    for key in ("model", "base_url"):
        if options.get(key) is not None:
            kwargs[key] = options[key]
    if options.get("script") is not None:
        kwargs["responses"] = _read_script(Path(base_dir or ".") / str(options["script"]))
    if "price_per_mtok" in kwargs and isinstance(kwargs["price_per_mtok"], list):
        kwargs["price_per_mtok"] = tuple(kwargs["price_per_mtok"])
    sub = None
    if options.get("sub_backend") or options.get("sub_model"):
        sub = {"backend": options.get("sub_backend") or backend,
               **_table(name, options, "sub_backend_options")}
        if options.get("sub_model"):
            sub["model"] = options["sub_model"]
        if options.get("base_url") and not options.get("sub_backend"):
            sub["base_url"] = options["base_url"]
    limits = Limits(**{k: options[k] for k in LIMIT_NAMES if options.get(k) is not None})
    return Profile(name, backend, kwargs, sub, str(options.get("env") or "local"),
                   _table(name, options, "env_options"), limits,
                   str(options.get("description") or ""))


def load_profiles(path: Path) -> list[Profile]:
    """The profiles of a config file (TOML, or JSON when the name ends in ``.json``)."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    tables = raw.get("profiles") if isinstance(raw, dict) else None
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"--config {path}: no [profiles.NAME] table")
    return [profile_from_options(name, _table(name, tables, name, what="profile"),
                                 base_dir=path.parent) for name in tables]


def _table(profile: str, options: Mapping[str, Any], key: str, *,
           what: str = "table") -> dict[str, Any]:
    value = options.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"profile {profile!r}: {key} must be a {what} of options")
    return dict(value)


def _read_script(path: Path) -> list[str]:
    try:
        replies = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"script file {path}: {exc}") from exc
    if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
        raise ConfigError(f"script file {path} must hold a JSON list of reply strings")
    return replies


class Catalog:
    """The profiles of one server and the backends they share.

    Backends are built once, when the catalog is (so a missing key or an unknown name
    fails at start), and shared by every request; the scripted backend is built anew per
    request, so each request replays its script.  ``close()`` closes the shared backends.
    """

    def __init__(self, profiles: list[Profile]) -> None:
        if not profiles:
            raise ConfigError("a server needs at least one profile")
        names = [p.name for p in profiles]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"two profiles are named {duplicate!r}")
        self.profiles = {p.name: p for p in profiles}
        self.default = profiles[0]
        self._shared: dict[str, tuple[LMBackend | None, LMBackend | None]] = {}
        try:
            for profile in profiles:
                self._shared[profile.name] = (self._build(profile.backend,
                                                          profile.backend_kwargs),
                                              self._build_spec(profile.sub_backend))
                self.open(profile, profile.limits).close()  # checks prices, env, tools
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _build(name: str, kwargs: Mapping[str, Any]) -> LMBackend | None:
        if name in _PER_REQUEST:
            registry.get_backend_class(name)  # an unknown name fails now
            return None
        return registry.create_backend(name, dict(kwargs))

    def _build_spec(self, spec: Mapping[str, Any] | None) -> LMBackend | None:
        if spec is None:
            return None
        options = dict(spec)
        return self._build(str(options.pop("backend")), options)

    def get(self, name: str | None) -> Profile:
        """The profile ``name`` (the first one for ``None``); ``KeyError`` when unknown."""
        return self.default if name is None else self.profiles[name]

    def open(self, profile: Profile, limits: Limits, *,
             trace: list[TraceSink] | None = None, persistent: bool = False,
             temperature: float | None = None) -> RLM:
        """A new ``RLM`` for one request (or one session) of ``profile``; close it after."""
        root, sub = self._shared[profile.name]
        sub_spec: Any = sub if sub is not None else (
            None if profile.sub_backend is None else dict(profile.sub_backend))
        extra: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
        return RLM(root if root is not None else profile.backend,
                   None if root is not None else dict(profile.backend_kwargs),
                   environment=profile.environment,
                   environment_kwargs=dict(profile.environment_kwargs) or None,
                   limits=limits, sub_backend=sub_spec, trace=trace, persistent=persistent,
                   **extra)

    def secrets(self, profile: Profile) -> list[str]:
        """The API keys of ``profile``'s shared backends (redacted from its traces)."""
        return [s for backend in self._shared.get(profile.name, ()) if backend is not None
                for s in backend.secrets()]

    def close(self) -> None:
        for root, sub in self._shared.values():
            for backend in (root, sub):
                if backend is not None:
                    backend.close()
        self._shared.clear()
