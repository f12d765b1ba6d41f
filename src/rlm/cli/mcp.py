"""``rlm mcp``: the engine as a Model Context Protocol server, over stdio (for a local
coding agent) or streamable HTTP (``--transport http``, at ``/mcp``)."""

from __future__ import annotations

from typing import Any

import click

from rlm.cli.serve import build_service, model_options, need_extra, server_options

__all__ = ["mcp"]


@click.command("mcp")
@model_options
@server_options
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio",
              show_default=True, help="stdio for a local agent; http: streamable HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (http); any other than loopback needs --api-key.")
@click.option("--port", type=int, default=8765, show_default=True,
              help="Port (http; 0: any free).")
@click.option("--api-key", envvar="RLM_SERVE_API_KEY", metavar="KEY",
              help="Bearer token HTTP clients must send (or RLM_SERVE_API_KEY).")
def mcp(transport: str, host: str, port: int, api_key: str | None, **flags: Any) -> None:
    """Serve RLM tools over MCP: answer, open_session / ask / close_session,
    list_traces, read_trace.

    Over stdio, stdout carries only the protocol (the SDK points file descriptor 1 at
    stderr while it serves, so model code cannot write into it).
    """
    need_extra("mcp", "mcp")
    from rlm.serve.guard import BearerGate, check_bind
    from rlm.serve.mcp_server import build_mcp, close_sessions

    if transport == "http":
        need_extra("serve", "uvicorn")
        check_bind(host, api_key)
    service = build_service(flags, secrets=(api_key,) if api_key else ())
    server = build_mcp(service)
    try:
        if transport == "stdio":
            server.run("stdio")
        else:
            from rlm.serve.app import run_server

            app = server.streamable_http_app(streamable_http_path="/mcp",
                                             host=host.strip("[]"))
            run_server(BearerGate(app, api_key), host=host, port=port, api_key=api_key,
                       path="/mcp", lifespan=True)
    finally:
        close_sessions(server)
        service.catalog.close()
