"""The OpenAI-compatible services as backends of their own name (``RLM(backend="groq")``).

Each class is ``OpenAIBackend`` with its ``provider`` preset (``rlm.backends.presets``):
``GroqBackend(model="llama-3.3-70b-versatile")`` is
``OpenAIBackend(model=..., provider="groq")``.  Every option of ``OpenAIBackend`` applies.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.presets import PRESETS

__all__ = [
    "AzureOpenAIBackend",
    "DeepSeekBackend",
    "FireworksBackend",
    "GroqBackend",
    "LlamaCppServerBackend",
    "OllamaBackend",
    "OpenRouterBackend",
    "PresetBackend",
    "TogetherBackend",
    "VLLMBackend",
]


class PresetBackend(OpenAIBackend):
    """``OpenAIBackend`` bound to the preset named like the class's ``name``."""

    name: ClassVar[str] = "openai"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.key_env_var = PRESETS[cls.name].key_env

    def __init__(self, model: str, **kwargs: Any) -> None:
        kwargs.setdefault("provider", self.name)
        super().__init__(model, **kwargs)


class OpenRouterBackend(PresetBackend):
    """OpenRouter: ``vendor/model`` names; each call is charged the cost OpenRouter reports."""

    name = "openrouter"


class GroqBackend(PresetBackend):
    """Groq's OpenAI-compatible API."""

    name = "groq"


class TogetherBackend(PresetBackend):
    """Together AI's OpenAI-compatible API."""

    name = "together"


class DeepSeekBackend(PresetBackend):
    """DeepSeek's API (prompt-cache hits are charged at the cache price)."""

    name = "deepseek"


class FireworksBackend(PresetBackend):
    """Fireworks AI's OpenAI-compatible API."""

    name = "fireworks"


class AzureOpenAIBackend(PresetBackend):
    """Azure OpenAI's v1 API: ``model`` is the deployment; the endpoint is ``base_url`` or
    ``$AZURE_OPENAI_ENDPOINT``; the key goes in the ``api-key`` header."""

    name = "azure"


class VLLMBackend(PresetBackend):
    """A vLLM server (default ``http://127.0.0.1:8000/v1``; free)."""

    name = "vllm"


class OllamaBackend(PresetBackend):
    """An Ollama server (default ``http://127.0.0.1:11434/v1``; free)."""

    name = "ollama"


class LlamaCppServerBackend(PresetBackend):
    """A llama.cpp server (default ``http://127.0.0.1:8080/v1``; free)."""

    name = "llamacpp"
