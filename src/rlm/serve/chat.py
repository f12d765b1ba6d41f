"""OpenAI chat completions, mapped: a request body to a question and a context, a result to
a response body or to stream chunks.  Pure functions; nothing here does I/O.

A request's last user message is the question.  The context is, in this order of
precedence: the ``context`` extension field (text or any JSON value), the
``context_path`` extension field (a file or folder under the server's data directory),
else every other message and every text file part, in order (one piece alone is the
context as it is; several are joined under ``--- role ---`` headers).  No context at all:
the question itself is the input.  ``limits`` (an object of ``max_budget``, ``max_depth``,
``max_timeout``, ``max_iterations``, ``max_tokens``, ``max_errors``) lowers the
profile's limits for this request.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

from rlm.core.limits import Limits
from rlm.result import RLMResult
from rlm.serve.guard import Refused
from rlm.serve.profiles import LIMIT_NAMES

__all__ = ["ChatRequest", "chunk", "completion_body", "error_body", "parse_chat",
           "rlm_extension", "usage_body"]


@dataclass(frozen=True)
class ChatRequest:
    """What one ``POST /v1/chat/completions`` asks for."""

    model: str | None
    question: str
    context: Any = None
    context_path: str | None = None
    limits: Any = None
    stream: bool = False
    temperature: float | None = None


def _bad(message: str, param: str | None = None) -> Refused:
    return Refused(400, message, code="invalid_request" if param is None else f"invalid_{param}")


def _file_text(part: dict[str, Any]) -> tuple[str, str]:
    """``(filename, text)`` of a ``{"type": "file", "file": {"file_data": ...}}`` part."""
    file = part.get("file")
    if not isinstance(file, dict) or not isinstance(file.get("file_data"), str):
        raise _bad("a file part needs file.file_data (a base64 data URL); file_id is not "
                   "supported", "file")
    name = str(file.get("filename") or "file")
    data = file["file_data"]
    head, comma, payload = data.partition(",")
    if not comma or not head.startswith("data:"):
        raise _bad(f"file {name!r}: file_data must be a data URL (data:...;base64,...)", "file")
    try:
        raw = base64.b64decode(payload, validate=True) if head.endswith(";base64") \
            else payload.encode()
        return name, raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad(f"file {name!r} is not base64 UTF-8 text; only text files are "
                   "supported", "file") from None


def _parts(content: Any, role: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The text and the files of one message's ``content``."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise _bad(f"a {role} message's content must be a string or a list of parts",
                   "messages")
    texts: list[str] = []
    files: list[tuple[str, str]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "file":
            files.append(_file_text(part))
        else:
            raise _bad(f"unsupported content part {kind!r}: only text and text files",
                       "messages")
    return texts, files


def _joined(pieces: list[tuple[str, str]]) -> str | None:
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0][1]
    return "\n\n".join(f"--- {label} ---\n{text}" for label, text in pieces)


def parse_chat(body: Any) -> ChatRequest:
    """The ``ChatRequest`` of a request body; ``Refused`` (400) when malformed."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages \
            or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages must be a non-empty list of message objects", "messages")
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise _bad("messages holds no user message: the last one is the question",
                   "messages")
    texts, files = _parts(messages[last].get("content"), "user")
    question = "\n".join(texts).strip()
    if not question:
        raise _bad("the last user message has no text: it is the question", "messages")
    pieces: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = str(message.get("role") or "message")
        if index != last:
            more, attached = _parts(message.get("content"), role)
            pieces += [(role, text) for text in more if text.strip()]
        else:
            attached = files
        pieces += [(f"file {name}", text) for name, text in attached]
    context, path = body.get("context"), body.get("context_path")
    if context is not None and path is not None:
        raise _bad("give context or context_path, not both", "context")
    if path is not None and not isinstance(path, str):
        raise _bad("context_path must be a string", "context_path")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, int | float)):
        raise _bad("temperature must be a number", "temperature")
    if context is None and path is None:
        context = _joined(pieces)
    return ChatRequest(model, question, context, path, body.get("limits"), stream,
                       None if temperature is None else float(temperature))


# -- responses ---------------------------------------------------------------------------------
def finish_reason(stop_reason: str) -> str:
    """``stop`` for an answer, ``length`` for a run a limit (or a cancel) ended."""
    return "stop" if stop_reason == "final" else "length"


def usage_body(result: RLMResult) -> dict[str, int]:
    """Tokens of the whole call tree, in the OpenAI ``usage`` shape."""
    return {"prompt_tokens": result.input_tokens, "completion_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens}


def rlm_extension(result: RLMResult, trace_id: str | None, limits: Limits) -> dict[str, Any]:
    """The ``rlm`` object of a response: cost, stop reason, iterations, trace id..."""
    return {
        "cost_usd": result.cost_usd,
        "stop_reason": result.stop_reason,
        "answer_source": result.answer_source,
        "iterations": result.iterations,
        "elapsed_s": round(result.elapsed_s, 3),
        "run_id": result.run_id,
        "trace_id": trace_id,
        "usage": {name: usage.to_dict() for name, usage in result.usage.items()},
        "limits": {name: getattr(limits, name) for name in LIMIT_NAMES},
    }


def completion_body(result: RLMResult, *, request_id: str, model: str, created: int,
                    trace_id: str | None, limits: Limits) -> dict[str, Any]:
    """A ``chat.completion`` object for ``result``."""
    return {
        "id": request_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason(result.stop_reason),
                     "message": {"role": "assistant", "content": result.response},
                     "logprobs": None}],
        "usage": usage_body(result),
        "rlm": rlm_extension(result, trace_id, limits),
    }


def chunk(request_id: str, model: str, created: int, *, delta: dict[str, Any] | None = None,
          finish: str | None = None, usage: dict[str, int] | None = None,
          rlm: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` and no ``delta``, the last one (its
    ``choices`` empty, as OpenAI sends it with ``stream_options.include_usage``)."""
    body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk",
                            "created": created, "model": model, "choices": []}
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish,
                            "logprobs": None}]
    if usage is not None:
        body["usage"] = usage
    if rlm is not None:
        body["rlm"] = rlm
    return body


def error_body(refused: Refused) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": refused.message, "type": refused.kind,
                      "param": None, "code": refused.code}}


def now() -> int:
    return int(time.time())
