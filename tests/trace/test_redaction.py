"""Keys are scrubbed from traces even when a server transforms them; odd text is written."""

from __future__ import annotations

import json
import re

import pytest

from rlm import RLM
from rlm.trace import JsonlSink, TraceEvent, load
from rlm.trace.sinks import MemorySink, redact
from rlm.trace.tracer import Tracer
from rlm.types import NodeRef
from tests.conftest import repl
from tests.fakes.openai_server import FakeOpenAIServer

KEY = "sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"


def transformed(key: str) -> dict[str, str]:
    half = len(key) // 2
    return {
        "lower": key.lower(),
        "upper": key.upper(),
        "swapcase": key.swapcase(),
        "spaced": " ".join(key),
        "dashed": "-".join(key),
        "no dashes": key.replace("-", ""),
        "underscored": key.replace("-", "_"),
        "wrapped": f"{key[:16]}\n{key[16:32]}\n{key[32:]}",
        "split far apart": f"first {key[:half]} and then, later, {key[half:]}",
        "split in a sentence": f"Your key {key[:20].upper()} ... {key[20:].lower()} is bad",
        "quoted chars": ",".join(repr(c) for c in key),
    }


def leaks(text: str, key: str = KEY, run: int = 10) -> list[str]:
    """Every run of ``run`` consecutive characters of the key still readable in ``text``."""
    core = re.sub(r"[^a-z0-9]", "", key.lower())
    folded = re.sub(r"[^a-z0-9]", "", text.lower())
    return [core[i:i + run] for i in range(len(core) - run + 1) if core[i:i + run] in folded]


@pytest.mark.parametrize("how", list(transformed(KEY)))
def test_transformed_keys_are_redacted(how):
    text = f"before <{transformed(KEY)[how]}> after"
    scrubbed = redact(text, [KEY])
    assert leaks(scrubbed) == [], scrubbed
    assert scrubbed.startswith("before <") and scrubbed.endswith("> after")
    assert "[REDACTED]" in scrubbed


def test_ordinary_text_is_left_alone():
    text = "sk-proj is a prefix; Ab3 and 'dE5' are short; the answer is 42 " * 3
    assert redact(text, [KEY]) == text
    assert redact({"a": [text, 1, None]}, [KEY]) == {"a": [text, 1, None]}


def test_short_secrets_are_matched_exactly_only():
    assert redact("token k and K", ["k"]) == "to[REDACTED]en [REDACTED] and K"
    assert redact("pw abc-12 ABC12", ["abc-12"]) == "pw [REDACTED] ABC12"


def test_keys_nested_anywhere_and_in_dict_keys():
    data = {"usage": {KEY.lower(): 1}, "list": [("x", KEY.upper())], "n": 3}
    scrubbed = redact(data, [KEY])
    assert leaks(json.dumps(scrubbed)) == [] and scrubbed["n"] == 3


def test_tracer_scrubs_in_memory_and_on_disk(tmp_path):
    memory, path = MemorySink(), tmp_path / "t.jsonl"
    disk = JsonlSink(path, secrets=[KEY])
    tracer = Tracer(memory, secrets=[KEY])
    event = tracer.emit("lm_call", NodeRef("r", None, 0), **{
        f"response_{i}": text for i, text in enumerate(transformed(KEY).values())})
    disk.emit(TraceEvent(**{**event.to_dict(), "data": {"raw": " ".join(KEY.lower())}}))
    disk.close()
    assert leaks(json.dumps(memory.events[0].data)) == []
    assert leaks(path.read_text()) == []


def test_a_server_echoing_the_key_transformed_never_reaches_the_trace(tmp_path):
    echoes = list(transformed(KEY).values())
    code = "\n".join(f"print({e!r})" for e in echoes)
    with FakeOpenAIServer() as fake:
        fake.enqueue(repl(code + "\nr = llm_query('echo it')\nprint(r)"))
        fake.enqueue(f"Invalid key {KEY.upper()} (also {' '.join(KEY)})")
        fake.enqueue(repl("FINAL('done')"))
        with RLM(backend="openai", trace=tmp_path / "trace.jsonl", max_iterations=4,
                 backend_kwargs={"model": "fake", "base_url": fake.url, "api_key": KEY}) as rlm:
            result = rlm.completion("go")
        assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.response == "done"
    text = (tmp_path / "trace.jsonl").read_text()
    assert leaks(text) == [] and "[REDACTED]" in text
    in_memory = json.dumps([e.to_dict() for n in result.trace.walk() for e in n.events])
    assert leaks(in_memory) == []


# -- text UTF-8 cannot encode -----------------------------------------------------------------
def test_a_lone_surrogate_is_written_escaped(tmp_path):
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path, secrets=[KEY])
    event = TraceEvent("code_exec", "r", None, 0, 1, 1, 0.0,
                       {"stdout": "a\ud800b\udfff", "\udc80key": ["\ud83d"]})
    sink.emit(event)
    sink.emit(TraceEvent("final", "r", None, 0, 1, 2, 0.0, {"response": "ok"}))
    sink.close()
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first)["data"] == event.data  # escaped, read back as the same text
    assert json.loads(second)["data"] == {"response": "ok"}


def test_printing_a_lone_surrogate_in_a_traced_run(tmp_path, scripted):
    backend = scripted([repl("print('bad \\ud800 text')"), repl("FINAL('done')")])
    path = tmp_path / "trace.jsonl"
    result = RLM(backend=backend, trace=path, max_iterations=3).completion("q")
    assert result.response == "done"
    [code] = [e for e in load(path).events if e.type == "code_exec"][:1]
    assert "\ud800" in code.data["stdout"]


def test_an_unserialisable_event_does_not_raise(tmp_path):
    path = tmp_path / "t.jsonl"
    loop: list = []
    loop.append(loop)
    sink = JsonlSink(path)
    sink.emit(TraceEvent("code_exec", "r", None, 0, 1, 1, 0.0, {"loop": loop}))
    sink.close()
    [line] = path.read_text().splitlines()
    assert "not serialisable" in json.loads(line)["data"]["trace_error"]
