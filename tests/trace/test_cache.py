"""The LM-call cache: ``RLM(cache=...)`` serves stored sub-call replies at no cost."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import pytest

from rlm import RLM
from rlm.backends.scripted import ScriptedBackend
from rlm.errors import ConfigError
from rlm.trace.cache import (
    CACHE_FILE,
    CachedReply,
    MemoryCache,
    RunCache,
    SQLiteCache,
    open_cache,
    request_key,
)
from rlm.types import Completion, CompletionRequest, Message
from tests.conftest import repl

BATCH = repl("r = llm_query_batched(['a', 'b', 'a', 'a'])\nFINAL(','.join(r))")


class Model:
    """A scripted model: the root runs ``code``; each sub-call gets a numbered reply."""

    def __init__(self, code: str = BATCH, *, cost: float = 0.01, fail: str | None = None):
        self.code = code
        self.counter = itertools.count()
        self.lock = threading.Lock()
        self.sub_calls = 0
        self.turns = 0
        self.fail = fail
        self.backend = ScriptedBackend(self.reply, cost_per_call=cost)

    def reply(self, messages: list[Message], depth: int) -> str:
        with self.lock:
            if messages[0]["role"] == "system":
                self.turns += 1
                return self.code
            self.sub_calls += 1
            prompt = messages[-1]["content"]
            if prompt == self.fail:
                raise ValueError("the sub-model failed")
            return f"{prompt}{next(self.counter)}"


def _run(model: Model, cache: object, **kwargs: object):
    with RLM(backend=model.backend, cache=cache, max_concurrency=4, **kwargs) as rlm:
        return rlm.completion("go")


def test_a_repeated_run_serves_its_sub_calls_from_the_cache_at_no_cost():
    cache = MemoryCache()
    first = _run(Model(), cache)
    again = Model()
    second = _run(again, cache)
    assert again.sub_calls == 0 and again.turns == 1
    assert sorted(second.response.split(",")) == sorted(first.response.split(","))
    assert first.cost_usd == pytest.approx(0.05)  # one turn + four sub-calls
    assert second.cost_usd == pytest.approx(0.01)  # the turn only
    assert second.usage["cache:scripted"].calls == 4
    assert second.usage["cache:scripted"].cost_usd == 0.0
    assert second.usage["scripted"].calls == 1
    hits = [e.data for e in second.trace.lm_calls if e.data.get("cached")]
    assert len(hits) == 4
    assert all(h["input_tokens"] == 0 and h["cost_usd"] == 0.0 for h in hits)
    assert all(h["saved_cost_usd"] == pytest.approx(0.01) for h in hits)
    assert all(h["usage_key"] == "cache:scripted" for h in hits)
    assert (cache.hits, cache.misses, cache.stores) == (4, 4, 4)
    # the tree rebuilt from the trace counts the hits as the ledger does
    assert second.trace.usage["cache:scripted"].calls == 4


def test_identical_calls_of_one_run_keep_their_own_replies():
    cache = MemoryCache()
    first = _run(Model(), cache)
    replies = first.response.split(",")
    assert len(set(replies)) == 4  # 'a' asked three times: three calls, three replies
    second = _run(Model(), cache)
    assert sorted(second.response.split(",")) == sorted(replies)


def test_the_sqlite_cache_is_shared_by_separate_objects(tmp_path: Path):
    folder = tmp_path / "cache"
    first = _run(Model(), folder)
    assert (folder / CACHE_FILE).is_file()
    again = Model()
    second = _run(again, folder)  # a new RLM opens the same file
    assert again.sub_calls == 0
    assert sorted(second.response.split(",")) == sorted(first.response.split(","))
    with SQLiteCache(folder / CACHE_FILE) as cache:
        assert len(cache) == 4


def test_a_cache_hit_costs_nothing_in_the_budget():
    cache = MemoryCache()
    _run(Model(), cache)
    again = Model()
    # $0.02 fits the turn but not four paid sub-calls ($0.05 in all)
    result = _run(again, cache, max_budget=0.02)
    assert result.stop_reason == "final" and again.sub_calls == 0
    assert result.cost_usd == pytest.approx(0.01)
    unpaid = Model()
    _run(unpaid, MemoryCache(), max_budget=0.02)  # without the cache: the budget runs out
    assert unpaid.sub_calls < 4


def test_turns_are_cached_only_when_asked():
    cache = MemoryCache(turns=True)
    _run(Model(), cache)
    again = Model()
    result = _run(again, cache)
    assert (again.turns, again.sub_calls) == (0, 0)
    assert result.cost_usd == 0.0 and result.usage["cache:scripted"].calls == 5


def test_failed_calls_are_not_stored():
    cache = MemoryCache()
    code = repl("r = llm_query_batched(['x', 'y'])\nFINAL(str(r))")
    _run(Model(code, fail="x"), cache)
    again = Model(code)
    _run(again, cache)
    assert again.sub_calls == 1  # 'x' failed the first time: asked again; 'y' was served


def test_typed_sub_calls_are_cached_by_schema():
    code = repl("n = llm_query('count', schema=int)\nFINAL(str(n + 1))")

    def counted(model: Model) -> Model:
        def reply(messages: list[Message], depth: int) -> str:
            if messages[0]["role"] == "system":
                return model.code
            model.sub_calls += 1
            return "41"

        model.backend = ScriptedBackend(reply)
        return model

    cache = MemoryCache()
    assert _run(counted(Model(code)), cache).response == "42"
    again = counted(Model(code))
    assert _run(again, cache).response == "42" and again.sub_calls == 0
    other = counted(Model(code.replace("schema=int", "schema=float")))
    _run(other, cache)
    assert other.sub_calls == 1  # another schema is another key


def test_the_async_path_uses_the_cache():
    cache = MemoryCache()
    _run(Model(), cache)
    again = Model()

    async def main() -> str:
        async with RLM(backend=again.backend, cache=cache) as rlm:
            return (await rlm.acompletion("go")).response

    assert asyncio.run(main()).count(",") == 3
    assert again.sub_calls == 0


def test_the_key_covers_what_changes_a_reply_and_nothing_else():
    base = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
    key = request_key("openai", "gpt", base)
    same = CompletionRequest(messages=[{"role": "user", "content": "hi"}], depth=3,
                             timeout_s=9.0, cache_key="conversation", purpose="turn")
    assert request_key("openai", "gpt", same) == key
    changed = [
        request_key("anthropic", "gpt", base), request_key("openai", "gpt-mini", base),
        request_key("openai", "gpt", base, occurrence=1),
        *(request_key("openai", "gpt", CompletionRequest(
            messages=[{"role": "user", "content": "hi"}], **{name: value}))
          for name, value in [("temperature", 0.7), ("max_output_tokens", 10),
                              ("stop", ["\n"]), ("grammar", "root ::= x"), ("model", "m"),
                              ("response_schema", {"type": "integer"})]),
        request_key("openai", "gpt", CompletionRequest(
            messages=[{"role": "user", "content": "hello"}])),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_a_reply_the_budget_may_have_cut_is_not_stored():
    cache = MemoryCache()
    run = RunCache(cache)
    asked = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
    sent = CompletionRequest(messages=asked.messages, max_output_tokens=100)
    run.put("cut", asked, sent, Completion("x" * 400, "m", output_tokens=100))
    run.put("whole", asked, sent, Completion("done", "m", output_tokens=2))
    run.put("asked", sent, sent, Completion("y" * 400, "m", output_tokens=100))
    assert cache.get("cut") is None
    assert cache.get("whole") == CachedReply("done", "m", output_tokens=2)
    assert cache.get("asked") is not None  # the caller's own cap: the reply is what it asked


def test_a_run_claims_each_key_once_under_threads():
    run = RunCache(MemoryCache())
    request = CompletionRequest(messages=[{"role": "user", "content": "same"}])
    keys: list[str | None] = []
    threads = [threading.Thread(target=lambda: keys.append(
        run.key("b", "m", request, "llm_query"))) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 32
    assert run.key("b", "m", request, "turn") is None  # turns: not by default


def test_open_cache(tmp_path: Path):
    assert open_cache(None) is None
    memory = MemoryCache()
    assert open_cache(memory) is memory
    folder = open_cache(tmp_path / "here")
    assert isinstance(folder, SQLiteCache) and folder.path == tmp_path / "here" / CACHE_FILE
    file = open_cache(str(tmp_path / "calls.db"))
    assert isinstance(file, SQLiteCache) and file.path.name == "calls.db"
    file.put("k", CachedReply("v", "m", 1, 2, 0.5))
    assert file.get("k") == CachedReply("v", "m", 1, 2, 0.5)
    folder.close()
    file.close()
    with pytest.raises(ConfigError, match="cache must be"):
        open_cache(42)  # type: ignore[arg-type]


def test_rlm_closes_the_cache_it_opened_and_not_the_callers(tmp_path: Path):
    model = Model()
    with RLM(backend=model.backend, cache=tmp_path) as rlm:
        opened = rlm.cache
    assert isinstance(opened, SQLiteCache)
    with pytest.raises(Exception, match="closed"):
        opened.get("k")
    mine = SQLiteCache(tmp_path / "mine.db")
    with RLM(backend=model.backend, cache=mine):
        pass
    assert mine.get("k") is None  # still open
    mine.close()
