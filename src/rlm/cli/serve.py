"""``rlm serve``: the OpenAI-compatible HTTP API; and the options it shares with ``rlm mcp``.

The model options are those of ``rlm run`` (``-b``, ``-m``, ``--base-url``, ``-e``,
``--sub-backend``, ``--sub-model``, the six limits, ``--script``); they make the default
profile (``--name``, default ``rlm``).  ``--config FILE`` adds profiles; with a config
file and none of ``-b`` / ``-m`` / ``--script``, the file's profiles are the only ones.
Starlette, uvicorn and the MCP SDK are imported only when a server starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rlm import config
from rlm.cli.backend_flags import assembly_progress, backend_kwargs, model_and_limit_options
from rlm.config import user_dir
from rlm.errors import ConfigError, MissingDependencyError

__all__ = ["build_service", "model_options", "serve", "server_options"]

_LIMITS = ("max_depth", "max_iterations", "max_budget", "max_timeout", "max_tokens",
           "max_errors")
_MODEL_OPTIONS = [
    click.option("--script", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                 help="JSON list of replies for the scripted backend (replayed per request)."),
    click.option("--name", "profile_name", default="rlm", show_default=True, metavar="ID",
                 help="The model id of the profile these options make."),
]
_SERVER_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True,
                                                            path_type=Path),
                 metavar="FILE", help="A TOML (or JSON) file of more [profiles.NAME]."),
    click.option("--trace-dir", type=click.Path(file_okay=False, path_type=Path),
                 metavar="DIR", help="One JSONL trace per request here (default: the user "
                                     "folder's traces/)."),
    click.option("--no-trace", is_flag=True, help="Write no trace files."),
    click.option("--data-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
                 metavar="DIR", help="The only folder requests may name files of."),
    click.option("--max-concurrent", type=int, default=8, show_default=True, metavar="N",
                 help="Runs at once; one more is refused (429), not queued."),
    click.option("--daily-budget", type=float, metavar="USD",
                 help="USD the server may spend per UTC day (kept in the user folder)."),
]


def _apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


#: The model options of ``rlm run``, as a decorator.
_SHARED_OPTIONS = model_and_limit_options(
    max_depth="Depth limit (default 1).", max_iterations="REPL turns per request.",
    max_budget="USD per request.", max_timeout="Seconds per request.",
    max_tokens="Tokens per request.", max_errors="Failed code blocks per request.",
    sub_backend="Backend for sub-calls.")


def model_options(function: Any) -> Any:
    """The model, environment and limit options of a profile, then --script and --name."""
    return _SHARED_OPTIONS(_apply(_MODEL_OPTIONS)(function))
#: Profiles, traces, data directory, concurrency and the daily cap, as a decorator.
server_options = _apply(_SERVER_OPTIONS)


def _flags_profile(flags: dict[str, Any]) -> Any:
    from rlm.serve.profiles import Profile

    backend = flags["backend"] or ("scripted" if flags["script"] else config.DEFAULT_BACKEND)
    kwargs = backend_kwargs(backend, model=flags["model"], base_url=flags["base_url"],
                            script=flags["script"])
    sub = None
    if flags["sub_backend"] or flags["sub_model"]:
        name = flags["sub_backend"] or backend
        sub = {"backend": name, **assembly_progress(name)}
        if flags["sub_model"]:
            sub["model"] = flags["sub_model"]
        if flags["base_url"] and not flags["sub_backend"]:
            sub["base_url"] = flags["base_url"]
    from rlm.core.limits import Limits

    limits = Limits(**{k: flags[k] for k in _LIMITS if flags.get(k) is not None})
    return Profile(flags["profile_name"], backend, kwargs, sub, flags["env"] or "local",
                   {}, limits)


def build_service(flags: dict[str, Any], *, secrets: tuple[str, ...] = ()) -> Any:
    """The ``Service`` the model and server options describe (backends built, checked)."""
    from rlm.serve.profiles import Catalog, load_profiles
    from rlm.serve.service import Service, ServiceConfig

    if flags["no_trace"] and flags["trace_dir"] is not None:
        raise ConfigError("give --trace-dir DIR or --no-trace, not both")
    profiles = []
    explicit = flags["backend"] or flags["model"] or flags["script"]
    if explicit or flags["config_file"] is None:
        profiles.append(_flags_profile(flags))
    if flags["config_file"] is not None:
        profiles += load_profiles(flags["config_file"])
    trace_dir = None if flags["no_trace"] else (flags["trace_dir"] or user_dir() / "traces")
    spend = user_dir() / "serve-spend.json" if flags["daily_budget"] is not None else None
    settings = ServiceConfig(trace_dir=trace_dir, data_dir=flags["data_dir"],
                             max_concurrent=flags["max_concurrent"],
                             daily_budget=flags["daily_budget"], spend_file=spend,
                             secrets=secrets)
    catalog = Catalog(profiles)
    try:
        return Service(catalog, settings)
    except BaseException:
        catalog.close()
        raise


def need_extra(extra: str, module: str) -> None:
    """Raise ``MissingDependencyError`` naming the extra when ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"rlm {extra} needs the {extra} extra: "
                                     f"pip install 'rlm[{extra}]'")


@click.command()
@model_options
@server_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any other than loopback needs --api-key.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free).")
@click.option("--api-key", envvar="RLM_SERVE_API_KEY", metavar="KEY",
              help="Bearer token clients must send (or RLM_SERVE_API_KEY).")
@click.option("--max-request-bytes", type=int, default=16 << 20, show_default=True,
              metavar="N", help="Largest request body accepted (413 beyond).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str, port: int, api_key: str | None, max_request_bytes: int,
          log_level: str, **flags: Any) -> None:
    """Serve RLM profiles as an OpenAI-compatible API (POST /v1/chat/completions).

    The last user message is the question; earlier messages, text file parts, or the
    `context` / `context_path` fields are the input.  Binds 127.0.0.1 unless --host
    is given, and then only with --api-key.
    """
    need_extra("serve", "starlette")
    need_extra("serve", "uvicorn")
    from rlm.serve.app import AppConfig, create_app, run_server
    from rlm.serve.guard import check_bind

    check_bind(host, api_key)  # before any model loads
    if max_request_bytes < 1:
        raise ConfigError("--max-request-bytes must be at least 1")
    service = build_service(flags, secrets=(api_key,) if api_key else ())
    try:
        app = create_app(service, AppConfig(api_key=api_key,
                                            max_request_bytes=max_request_bytes))
        run_server(app, host=host, port=port, api_key=api_key, log_level=log_level)
    finally:
        service.catalog.close()
