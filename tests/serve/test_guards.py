"""What ``rlm serve`` refuses and what it stops: bearer auth, the concurrency limit (429
with Retry-After), the request size cap, the daily spending cap, binding beyond loopback
without a key, and a client that disconnects (its run is cancelled)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from rlm.cli import cli  # noqa: E402
from rlm.serve.guard import is_loopback  # noqa: E402
from rlm.trace.tree import load  # noqa: E402
from tests.serve.live import LiveServer  # noqa: E402

ASK = [{"role": "user", "content": "How long?"}]



def test_a_wrong_or_missing_bearer_token_is_401(launch, client):
    live = launch("--api-key", "right-key-123")
    with pytest.raises(openai.AuthenticationError):
        client(live, "wrong-key-123").chat.completions.create(model="rlm", messages=ASK)
    missing = httpx.post(f"{live.url}/v1/chat/completions", json={"messages": ASK})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{live.url}/v1/models").status_code == 401
    answer = client(live, "right-key-123").chat.completions.create(
        model="rlm", messages=ASK, extra_body={"context": "abcde"})
    assert answer.choices[0].message.content == "5"
    assert httpx.get(f"{live.url}/healthz").json()["status"] == "ok"  # no key needed


def test_past_the_concurrency_limit_is_429_with_retry_after(launch, client):
    live = launch("--max-concurrent", "1")
    results: list[object] = []

    def slow() -> None:  # 8 turns of 0.25 s: about 2 s
        results.append(client(live).chat.completions.create(
            model="slow", messages=ASK, extra_body={"limits": {"max_iterations": 8}}))

    first = threading.Thread(target=slow)
    first.start()
    deadline = time.monotonic() + 10
    while live.health()["active_runs"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as refused:
        client(live).chat.completions.create(model="rlm", messages=ASK)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.response.json()["error"]["code"] == "concurrency_limit"
    first.join(timeout=30)
    assert results and results[0].model_extra["rlm"]["stop_reason"] == "max_iterations"
    again = client(live).chat.completions.create(model="rlm", messages=ASK,
                                                 extra_body={"context": "ab"})
    assert again.choices[0].message.content == "2"


def test_a_body_over_the_size_cap_is_413(launch, client):
    live = launch("--max-request-bytes", "4096")
    with pytest.raises(openai.APIStatusError) as refused:
        client(live).chat.completions.create(model="rlm", messages=ASK,
                                             extra_body={"context": "x" * 10_000})
    assert refused.value.status_code == 413

    def chunks():  # no Content-Length: the cap holds on the bytes read
        yield b'{"model": "rlm", "context": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'", "messages": [{"role": "user", "content": "hi"}]}'

    streamed = httpx.post(f"{live.url}/v1/chat/completions", content=chunks(),
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    small = client(live).chat.completions.create(model="rlm", messages=ASK,
                                                 extra_body={"context": "x" * 100})
    assert small.choices[0].message.content == "100"


def test_the_daily_spending_cap_refuses_once_spent(launch, client):
    live = launch("--daily-budget", "0.02")
    for _ in range(2):  # each run costs one $0.01 call, its max_budget
        answer = client(live).chat.completions.create(model="priced", messages=ASK,
                                                      extra_body={"context": "abc"})
        extension = answer.model_extra["rlm"]
        assert extension["cost_usd"] == pytest.approx(0.01)
        assert extension["cost_usd"] <= extension["limits"]["max_budget"] + 1e-12
    with pytest.raises(openai.RateLimitError, match="daily spending cap") as refused:
        client(live).chat.completions.create(model="priced", messages=ASK)
    assert int(refused.value.response.headers["retry-after"]) > 5
    saved = json.loads((live.trace_dir.parent / "home" / "serve-spend.json").read_text())
    assert list(saved.values()) == [pytest.approx(0.02)]


def test_a_client_that_disconnects_cancels_its_run(server: LiveServer, client):
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):  # the client gives up after 1 s
        client(server, timeout=1.0).chat.completions.create(model="slow", messages=ASK)
    server.wait_idle(timeout_s=5)
    assert time.monotonic() - started < 5  # 30 turns of 0.25 s would take 7.5 s
    newest = max(server.trace_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    node = load(newest)
    assert node.stop_reason == "cancelled"
    assert node.elapsed_s is not None and node.elapsed_s < 4


def test_a_streaming_client_that_disconnects_cancels_its_run(server: LiveServer, client):
    stream = client(server).chat.completions.create(model="slow", messages=ASK, stream=True)
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.model_extra.get("reasoning_content"):
            seen += 1
        if seen >= 3:
            break
    stream.close()
    server.wait_idle(timeout_s=5)
    newest = max(server.trace_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    assert load(newest).stop_reason == "cancelled"


def test_binding_beyond_loopback_needs_an_api_key(tmp_path):
    from click.testing import CliRunner

    script = tmp_path / "s.json"
    script.write_text('["FINAL(1)"]')
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--script", str(script)])
    assert result.exit_code == 2
    assert "refusing to bind 0.0.0.0" in result.stderr and "--api-key" in result.stderr


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.com", False)])
def test_which_hosts_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback
