"""Front doors to an RLM: ``rlm serve`` (an OpenAI-compatible HTTP API) and ``rlm mcp``.

``profiles`` holds what a server offers (named RLM configurations, read from flags or a
config file); ``guard`` what it refuses (auth, the concurrency gate, the daily spending
cap, paths outside the data directory); ``service`` runs one request's call tree in a
worker thread, cancelled with its caller; ``chat`` maps OpenAI requests and responses,
``progress`` turns trace events into progress lines, ``app`` is the Starlette app and
``mcp_server`` the Model Context Protocol server.  Importing this package loads neither
Starlette nor the MCP SDK (extras ``serve`` and ``mcp``); ``app`` and ``mcp_server`` do.
"""

from __future__ import annotations

from rlm.serve.profiles import Catalog, Profile, load_profiles
from rlm.serve.service import Service, ServiceConfig

__all__ = ["Catalog", "Profile", "Service", "ServiceConfig", "load_profiles"]
