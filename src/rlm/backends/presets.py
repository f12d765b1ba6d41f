"""Named OpenAI-compatible services: base URL, key variable, price section, usage quirks.

``PRESETS`` is what ``OpenAIBackend(provider=...)`` and the backends registered under
the same names (``groq``, ``openrouter``...; ``rlm.backends.preset_backends``) read.
This module is data only: it imports no HTTP client.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from rlm.errors import ConfigError

__all__ = ["PRESETS", "Preset", "cached_tokens", "reported_cost"]


@dataclass(frozen=True)
class Preset:
    """One service.

    - ``base_url``: its API root; ``""`` when each account has its own (Azure), then
      ``url_env`` names a variable holding the endpoint, completed by ``url_suffix``;
    - ``key_env``: the variable holding the key (``None``: a keyless local server);
    - ``prices``: the section of ``rlm.backends.prices`` with its models, ``None`` for
      ``vendor/model`` names priced from the vendor's section (OpenRouter);
    - ``reports_cost``: the service puts each call's USD cost in ``usage.cost``, which
      is then what the call is charged;
    - ``key_header``: the header carrying the bare key (``None``: ``Authorization: Bearer``).
    """

    name: str
    base_url: str
    key_env: str | None
    prices: str | None = "openai"
    reports_cost: bool = False
    key_header: str | None = None
    url_env: str | None = None
    url_suffix: str = ""
    local: bool = False

    def url(self, explicit: str | None) -> str:
        """The base URL: ``explicit``, else the preset's own, else the endpoint variable."""
        if explicit:
            return explicit.rstrip("/")
        if self.base_url:
            return self.base_url
        endpoint = os.environ.get(self.url_env or "", "").strip()
        if not endpoint:
            raise ConfigError(f"provider {self.name!r} needs base_url=... or the {self.url_env} "
                              "environment variable (the resource's endpoint)")
        return endpoint.rstrip("/") + self.url_suffix


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    Preset("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", prices=None,
           reports_cost=True),
    Preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", prices="groq"),
    Preset("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", prices="together"),
    Preset("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", prices="deepseek"),
    Preset("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY",
           prices="fireworks"),
    # Azure OpenAI's v1 API: model= is the deployment name; prices are OpenAI's list prices
    Preset("azure", "", "AZURE_OPENAI_API_KEY", key_header="api-key",
           url_env="AZURE_OPENAI_ENDPOINT", url_suffix="/openai/v1"),
    Preset("vllm", "http://127.0.0.1:8000/v1", None, prices=None, local=True),
    Preset("ollama", "http://127.0.0.1:11434/v1", None, prices=None, local=True),
    Preset("llamacpp", "http://127.0.0.1:8080/v1", None, prices=None, local=True),
)}


def cached_tokens(usage: dict[str, Any]) -> Any:
    """The prompt tokens a chat-completions ``usage`` says came from the provider's cache:
    OpenAI's ``prompt_tokens_details.cached_tokens`` or DeepSeek's
    ``prompt_cache_hit_tokens``; 0 when absent.  Returned as reported, so that
    ``Completion`` refuses an impossible count like any other."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        return details["cached_tokens"]
    return usage.get("prompt_cache_hit_tokens") or 0


def reported_cost(usage: dict[str, Any]) -> float | None:
    """``usage.cost`` when it is a possible USD amount (finite, >= 0), else ``None``."""
    cost = usage.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return None
    return float(cost) if math.isfinite(cost) and 0 <= cost <= 1e6 else None
