"""``rlm serve`` driven by the official ``openai`` client: sync, async and streaming, over
scripted profiles and over the fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

openai = pytest.importorskip("openai")

from rlm.trace.tree import load  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402
from tests.serve.live import LENGTH, LiveServer  # noqa: E402

DOCUMENT = "line of a long document\n" * 40



def test_sync_client_gets_the_answer_usage_and_the_rlm_object(server: LiveServer, client):
    response = client(server).chat.completions.create(
        model="rlm", messages=[{"role": "system", "content": DOCUMENT},
                               {"role": "user", "content": "How long is it?"}])
    assert response.choices[0].message.content == str(len(DOCUMENT))
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == (response.usage.prompt_tokens
                                           + response.usage.completion_tokens)
    extension = response.model_extra["rlm"]
    assert extension["stop_reason"] == "final" and extension["iterations"] == 1
    assert extension["cost_usd"] == 0.0
    node = load(server.trace_dir / f"{extension['trace_id']}.jsonl")
    assert node.run_id == extension["run_id"] and node.stop_reason == "final"


def test_earlier_messages_are_joined_into_the_context(server: LiveServer, client):
    messages = [{"role": "user", "content": "aaaa"}, {"role": "assistant", "content": "bb"},
                {"role": "user", "content": "How long?"}]
    answer = client(server).chat.completions.create(model="rlm", messages=messages)
    joined = "--- user ---\naaaa\n\n--- assistant ---\nbb"
    assert answer.choices[0].message.content == str(len(joined))


def test_a_text_file_part_is_the_context(server: LiveServer, client):
    text = "é" * 50 + "\n" + "z" * 20
    data = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    answer = client(server).chat.completions.create(model="rlm", messages=[{
        "role": "user", "content": [{"type": "text", "text": "How long is the file?"},
                                    {"type": "file", "file": {"filename": "notes.txt",
                                                              "file_data": data}}]}])
    assert answer.choices[0].message.content == str(len(text))


def test_the_context_field_replaces_the_messages(server: LiveServer, client):
    answer = client(server).chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "How long?"}],
        extra_body={"context": "x" * 77})
    assert answer.choices[0].message.content == "77"


def test_async_client_runs_requests_concurrently(server: LiveServer):
    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                      max_retries=0) as aclient:
            replies = await asyncio.gather(*(aclient.chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "How long?"}],
                extra_body={"context": "y" * n}) for n in (5, 50, 500)))
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(ask_all()) == ["5", "50", "500"]


def test_streaming_sends_progress_then_the_answer_then_usage(server: LiveServer, client):
    stream = client(server).chat.completions.create(
        model="two-turns", stream=True, messages=[{"role": "user", "content": "Count."}],
        extra_body={"context": "abc"})
    chunks = list(stream)
    progress = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks
                if c.choices and c.choices[0].delta.model_extra.get("reasoning_content")]
    assert any("turn 1" in line for line in progress)
    assert any("turn 2" in line for line in progress)
    assert any("code 2: final" in line for line in progress)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer == "3"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices
              and c.choices[0].finish_reason]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens > 0
    assert last.model_extra["rlm"]["iterations"] == 2
    # the answer comes after every progress line
    kinds = ["progress" if c.choices and c.choices[0].delta.model_extra.get(
        "reasoning_content") else "answer" if c.choices and c.choices[0].delta.content
        else "other" for c in chunks]
    assert kinds.index("answer") > max(i for i, k in enumerate(kinds) if k == "progress")


def test_models_lists_the_profiles(server: LiveServer, client):
    models = client(server).models.list()
    ids = [m.id for m in models.data]
    assert ids == ["rlm", "slow", "two-turns", "priced", "session"]
    priced = next(m for m in models.data if m.id == "priced")
    assert priced.model_extra["rlm"]["limits"]["max_budget"] == 0.01


def test_an_unknown_model_is_404(server: LiveServer, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(server).chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}])


def test_a_body_without_a_user_message_is_400(server: LiveServer, client):
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client(server).chat.completions.create(
            model="rlm", messages=[{"role": "system", "content": "only this"}])


def test_request_limits_are_capped_by_the_profile(server: LiveServer, client):
    capped = client(server).chat.completions.create(
        model="two-turns", messages=[{"role": "user", "content": "Count."}],
        extra_body={"context": "abcd", "limits": {"max_iterations": 10}})
    assert capped.model_extra["rlm"]["limits"]["max_iterations"] == 3
    assert capped.choices[0].message.content == "4"
    lowered = client(server).chat.completions.create(
        model="two-turns", messages=[{"role": "user", "content": "Count."}],
        extra_body={"context": "abcd", "limits": {"max_iterations": 1}})
    assert lowered.model_extra["rlm"]["stop_reason"] == "max_iterations"
    assert lowered.choices[0].finish_reason == "length"


def test_an_unknown_limit_is_400(server: LiveServer, client):
    with pytest.raises(openai.BadRequestError, match="unknown limit"):
        client(server).chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "hi"}],
            extra_body={"limits": {"max_dollars": 1}})


def test_context_path_reads_files_and_folders_under_the_data_dir(server: LiveServer,
                                                                 client):
    chat = client(server).chat.completions
    one = chat.create(model="rlm", messages=[{"role": "user", "content": "How long?"}],
                      extra_body={"context_path": "doc.txt"})
    assert one.choices[0].message.content == "1234"
    folder = chat.create(model="rlm", messages=[{"role": "user", "content": "How many?"}],
                         extra_body={"context_path": "docs"})
    assert folder.choices[0].message.content == "1"  # one file in the folder mapping


@pytest.mark.parametrize("path", ["../secret.txt", "link.txt", "docs/../../secret.txt"])
def test_context_path_out_of_the_data_dir_is_refused(server: LiveServer, path, client):
    with pytest.raises(openai.PermissionDeniedError, match="outside the data directory"):
        client(server).chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "Read it."}],
            extra_body={"context_path": path})


def test_an_absolute_context_path_outside_is_refused(server: LiveServer, setup, client):
    with pytest.raises(openai.PermissionDeniedError):
        client(server).chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "Read it."}],
            extra_body={"context_path": str(setup["secret"])})


def test_the_fake_openai_server_as_the_backend(launch, client):
    with FakeOpenAIServer(reply=LENGTH) as fake:
        live = launch("-b", "openai", "-m", "fake", "--base-url", fake.url, "--name", "remote")
        response = client(live).chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "How long?"}],
            extra_body={"context": "q" * 321})
        assert response.choices[0].message.content == "321"
        assert fake.requests and fake.requests[0].body["model"] == "fake"
        # the fake counts 4 characters a token: the usage is the backend's, summed
        sent = sum(len(m["content"]) for m in fake.requests[0].body["messages"])
        assert response.usage.prompt_tokens == -(-sent // 4)
        assert response.model_extra["rlm"]["usage"]["fake"]["calls"] == 1


def test_no_api_key_enters_a_trace_or_the_log(launch, client):
    server_key, backend_key = "serve-key-7f3a9c2e51", "sk-backend-4d8b1e6f09"
    with FakeOpenAIServer(reply=LENGTH) as fake:
        live = launch("-b", "openai", "-m", "fake", "--base-url", fake.url, "--name",
                      "remote", "--api-key", server_key, env={"OPENAI_API_KEY": backend_key})
        answer = client(live, server_key).chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "How long?"}],
            extra_body={"context": "abc"})
        assert answer.choices[0].message.content == "3"
        # both keys were in play: the client sent one, the backend the other
        assert fake.requests[0].headers["authorization"] == f"Bearer {backend_key}"
    live.stop()
    texts = [p.read_text() for p in live.trace_dir.glob("*.jsonl")] + [live.stderr()]
    assert len(texts) == 2 and "run_start" in texts[0]
    for text in texts:
        assert server_key not in text and backend_key not in text


def test_request_ids_are_unique_and_json_is_openai_shaped(server: LiveServer):
    import httpx

    bodies = [httpx.post(f"{server.url}/v1/chat/completions", timeout=10, json={
        "model": "rlm", "messages": [{"role": "user", "content": "hi"}]}).json()
        for _ in range(2)]
    assert bodies[0]["id"] != bodies[1]["id"]
    assert bodies[0]["object"] == "chat.completion"
    assert json.loads(json.dumps(bodies[0]))["choices"][0]["message"]["role"] == "assistant"


def test_a_failing_backend_is_a_502_with_its_error(launch, client):
    with FakeOpenAIServer(reply=LENGTH) as fake:
        fake.enqueue(status=400)  # not retried: the backend raises, the run fails
        live = launch("-b", "openai", "-m", "fake", "--base-url", fake.url, "--name", "remote")
        with pytest.raises(openai.InternalServerError) as failed:
            client(live).chat.completions.create(model="remote", messages=[
                {"role": "user", "content": "How long?"}])
        assert failed.value.status_code == 502
        assert failed.value.response.json()["error"]["type"] == "backend_error"
        assert live.health()["active_runs"] == 0  # the run gave its slot back
