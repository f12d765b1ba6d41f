"""The OpenAI-compatible HTTP API as a Starlette app, and ``run_server`` (uvicorn).

Routes: ``POST /v1/chat/completions`` (see ``rlm.serve.chat``), ``GET /v1/models`` (the
profiles) and ``GET /healthz`` (no auth).  Every refusal is an OpenAI-style error body:
401 (bearer token), 400 (malformed), 403/404 (``context_path``), 404 (unknown model),
413 (body over the size cap), 429 with ``Retry-After`` (concurrency limit, daily cap),
502 (the backend or the environment failed).  A client that disconnects cancels its run.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlm.errors import ConfigError, RLMError
from rlm.result import RLMResult
from rlm.serve import chat
from rlm.serve.guard import Refused, check_bind, check_token, run_refusal
from rlm.serve.service import Service
from rlm.serve.streaming import RunStream

__all__ = ["AppConfig", "create_app", "run_server"]

_log = logging.getLogger("rlm.serve")
DEFAULT_MAX_REQUEST_BYTES = 16 << 20


@dataclass(frozen=True)
class AppConfig:
    """HTTP-level settings: the bearer token and the request size cap (bytes)."""

    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def _refusal(refused: Refused) -> JSONResponse:
    headers = {}
    if refused.retry_after_s is not None:
        headers["Retry-After"] = str(refused.retry_after_s)
    if refused.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(chat.error_body(refused), status_code=refused.status, headers=headers)


async def _body(request: Request, cap: int) -> bytes:
    """The request body, refused (413) past ``cap`` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise Refused(413, f"the request body is over {cap:,} bytes", code="request_too_large")
    parts, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > cap:
            raise Refused(413, f"the request body is over {cap:,} bytes",
                          code="request_too_large")
        parts.append(piece)
    return b"".join(parts)


async def _unless_disconnected(request: Request,
                               work: Callable[[], Awaitable[RLMResult]]) -> RLMResult | None:
    """``await work()``, cancelled when the client disconnects first (then ``None``)."""
    outcome: dict[str, Any] = {}

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        outcome["gone"] = True
        scope.cancel()

    async def run(scope: anyio.CancelScope) -> None:
        try:
            outcome["result"] = await work()
        except RLMError as exc:
            outcome["error"] = exc
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        group.start_soon(run, group.cancel_scope)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def create_app(service: Service, config: AppConfig | None = None) -> Starlette:
    """The Starlette app serving ``service``."""
    settings = config or AppConfig()

    def authorised(request: Request) -> None:
        if not check_token(request.headers.get("authorization"), settings.api_key):
            raise Refused(401, "missing or wrong API key: send Authorization: Bearer <key>",
                          kind="authentication_error", code="invalid_api_key")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active_runs": service.active,
                             "max_concurrent": service.config.max_concurrent})

    async def models(request: Request) -> Response:
        try:
            authorised(request)
        except Refused as refused:
            return _refusal(refused)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "rlm",
                 "rlm": profile.describe()}
                for name, profile in service.catalog.profiles.items()]
        return JSONResponse({"object": "list", "data": data})

    async def completions(request: Request) -> Response:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            authorised(request)
            raw = await _body(request, settings.max_request_bytes)
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"the body is not JSON: {exc}", code="invalid_json") \
                    from None
            asked = chat.parse_chat(body)
            context = (asked.context if asked.context_path is None
                       else service.context_path(asked.context_path))
            profile = service.profile(asked.model)
            ticket = service.admit(profile.name, asked.limits)
        except Refused as refused:
            return _refusal(refused)
        created = chat.now()
        if asked.stream:
            return RunStream(service, ticket, asked.question, context, request_id=request_id,
                             model=profile.name, created=created,
                             temperature=asked.temperature)
        try:
            result = await _unless_disconnected(request, lambda: service.run(
                ticket, asked.question, context, temperature=asked.temperature))
        except RLMError as exc:
            _log.warning("%s: %s: %s", request_id, type(exc).__name__, exc)
            return _refusal(run_refusal(exc))
        if result is None:  # nobody is left to read an answer
            _log.info("%s: client disconnected; run cancelled", request_id)
            return Response(status_code=499)
        _log.info("%s: %s, %d iterations, $%.4f, %.2fs, trace %s", request_id,
                  result.stop_reason, result.iterations, result.cost_usd, result.elapsed_s,
                  ticket.trace_id if service.config.trace_dir else "-")
        trace_id = ticket.trace_id if service.config.trace_dir is not None else None
        return JSONResponse(chat.completion_body(result, request_id=request_id,
                                                 model=profile.name, created=created,
                                                 trace_id=trace_id, limits=ticket.limits))

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ])


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def run_server(app: Any, *, host: str, port: int, api_key: str | None,
               log_level: str = "info", path: str = "/v1", lifespan: bool = False) -> None:
    """Serve ``app`` with uvicorn until interrupted; refuse a non-loopback ``host``
    without an API key.  Prints ``rlm: listening on http://HOST:PORT<path>`` on stderr
    once the socket is bound (the port is the real one with ``port=0``).  ``lifespan``:
    run the app's lifespan (the MCP SDK's app needs it)."""
    import uvicorn

    check_bind(host, api_key)
    if not _log.handlers:  # one line per request on stderr, as uvicorn's own lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rlm: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(log_level.upper())
    sock = _socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(f"rlm: listening on http://{shown}:{bound}{path}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on" if lifespan else "off",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
