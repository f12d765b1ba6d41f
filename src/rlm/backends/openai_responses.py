"""Request bodies and reply readers of the two OpenAI APIs the ``openai`` backend speaks.

Chat completions (``POST /chat/completions``, the default) and the Responses API
(``POST /responses``, ``api="responses"``: for reasoning models).  A Responses request
sends leading ``"system"`` messages as ``instructions`` and the rest as ``input``; a typed
sub-call's schema goes in ``text.format``; stop sequences are not part of that API and are
not sent.  Its usage's ``output_tokens`` include the reasoning tokens
(``output_tokens_details.reasoning_tokens``), so they are charged at the output price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm.backends.presets import cached_tokens
from rlm.types import CompletionRequest

__all__ = ["Reply", "read_chat", "read_responses", "responses_body"]


@dataclass(frozen=True)
class Reply:
    """What a reply says, as reported (``Completion`` checks the counts): the text, the
    prompt, reply and cached-prompt tokens (``None`` where absent) and the usage object."""

    text: str
    input_tokens: Any
    output_tokens: Any
    cached_tokens: Any
    usage: dict[str, Any]
    reasoning_tokens: Any = 0


def _usage(data: dict[str, Any]) -> dict[str, Any]:
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise TypeError(f"usage is {type(usage).__name__}")
    return usage


def read_chat(data: Any) -> Reply:
    """A chat completion's text and usage (raises ``LookupError`` / ``TypeError``)."""
    text = data["choices"][0]["message"]["content"] or ""
    if not isinstance(text, str):
        raise TypeError(f"content is {type(text).__name__}")
    usage = _usage(data)
    return Reply(text, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                 cached_tokens(usage), usage)


def read_responses(data: Any) -> Reply:
    """A Responses API reply's text (its ``output_text`` parts) and usage."""
    output = data["output"]
    if not isinstance(output, list):
        raise TypeError(f"output is {type(output).__name__}")
    parts: list[str] = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue  # reasoning summaries, tool calls
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "output_text":
                text = part.get("text") or ""
                if not isinstance(text, str):
                    raise TypeError(f"output_text is {type(text).__name__}")
                parts.append(text)
    usage = _usage(data)
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") or 0 if isinstance(details, dict) else 0
    out_details = usage.get("output_tokens_details")
    reasoning = out_details.get("reasoning_tokens") or 0 \
        if isinstance(out_details, dict) else 0
    out = usage.get("output_tokens")
    if isinstance(out, int) and isinstance(reasoning, int) and 0 <= out < reasoning:
        out = reasoning  # a server that leaves them out of output_tokens: count them anyway
    return Reply("".join(parts), usage.get("input_tokens"), out, cached, usage, reasoning)


def responses_body(request: CompletionRequest, model: str, extra: dict[str, Any],
                   schema: bool) -> dict[str, Any]:
    """The JSON of ``POST /responses`` for ``request``; ``extra`` holds defaults (such as
    ``{"reasoning": {"effort": "low"}}``); ``schema``: send the response schema."""
    messages = list(request.messages)
    system: list[str] = []
    while messages and messages[0].get("role") == "system":
        system.append(messages.pop(0).get("content", ""))
    body: dict[str, Any] = {**extra, "model": model, "store": extra.get("store", False),
                            "input": [{"role": m.get("role", "user"),
                                       "content": m.get("content", "")} for m in messages]}
    if system:
        body["instructions"] = "\n\n".join(system)
    if request.max_output_tokens is not None:
        body["max_output_tokens"] = request.max_output_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.response_schema is not None and schema:
        body["text"] = {"format": {"type": "json_schema", "name": "answer",
                                   "schema": request.response_schema, "strict": False}}
    return body
