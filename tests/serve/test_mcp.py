"""``rlm mcp`` driven end to end by the MCP SDK's own client, over stdio and over
streamable HTTP: the tools, progress notifications, sessions, traces, cancellation."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters

from tests.serve.live import start

TOOLS = {"answer", "open_session", "ask", "close_session", "list_traces", "read_trace"}


def _stdio(setup: dict[str, Path], root: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k != "RLM_SERVE_API_KEY"}
    env["RLM_USER_PATH"] = str(root / "home")
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "rlm.cli", "mcp", "--config", str(setup["config"]), "--trace-dir",
              str(root / "traces"), "--data-dir", str(setup["data"])],
        env=env)


def _run(main: Any) -> Any:
    return anyio.run(main)


def test_stdio_lists_the_tools_and_answers_with_progress(setup, tmp_path):
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async def main() -> Any:
        async with Client(_stdio(setup, tmp_path)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool(
                "answer", {"question": "How long?", "context": "abcde"},
                progress_callback=on_progress)
            return names, result

    names, result = _run(main)
    assert names >= TOOLS
    assert not result.is_error
    assert result.structured_content["answer"] == "5"
    assert result.structured_content["stop_reason"] == "final"
    assert any("turn 1" in line for line in progress)
    assert any("code 1: final" in line for line in progress)
    trace = tmp_path / "traces" / f"{result.structured_content['trace_id']}.jsonl"
    assert trace.is_file()


def test_stdio_reads_paths_under_the_data_dir_only(setup, tmp_path):
    async def main() -> Any:
        async with Client(_stdio(setup, tmp_path)) as client:
            inside = await client.call_tool("answer", {"question": "How long?",
                                                       "path": "doc.txt"})
            outside = await client.call_tool("answer", {"question": "Read it.",
                                                        "path": "../secret.txt"})
            linked = await client.call_tool("answer", {"question": "Read it.",
                                                       "path": "link.txt"})
            return inside, outside, linked

    inside, outside, linked = _run(main)
    assert inside.structured_content["answer"] == "1234"
    for refused in (outside, linked):
        assert refused.is_error
        assert "outside the data directory" in refused.content[0].text


def test_stdio_session_keeps_the_context_and_the_repl(setup, tmp_path):
    async def main() -> Any:
        async with Client(_stdio(setup, tmp_path)) as client:
            opened = await client.call_tool("open_session", {"context": "abc",
                                                             "model": "session"})
            session = opened.structured_content["session_id"]
            first = await client.call_tool("ask", {"session_id": session,
                                                   "question": "How long?"})
            second = await client.call_tool("ask", {"session_id": session,
                                                    "question": "And the first answer?"})
            closed = await client.call_tool("close_session", {"session_id": session})
            again = await client.call_tool("ask", {"session_id": session,
                                                   "question": "Still there?"})
            return opened, first, second, closed, again

    opened, first, second, closed, again = _run(main)
    assert opened.structured_content["context_length"] == 3
    assert first.structured_content["answer"] == "3"
    # the second question sees the first's input and answer in the same REPL
    assert second.structured_content["answer"] == '[3, "3"]'
    assert "after 2 questions" in closed.content[0].text
    assert again.is_error and "no session" in again.content[0].text
    traces = sorted((tmp_path / "traces").glob("*.jsonl"))
    assert len(traces) == 2  # one per question


def test_stdio_lists_and_reads_traces(setup, tmp_path):
    async def main() -> Any:
        async with Client(_stdio(setup, tmp_path)) as client:
            answered = await client.call_tool("answer", {"question": "How long is it?",
                                                         "context": "xyz"})
            listed = await client.call_tool("list_traces", {})
            trace_id = answered.structured_content["trace_id"]
            tree = await client.call_tool("read_trace", {"trace_id": trace_id})
            raw = await client.call_tool("read_trace", {"trace_id": trace_id, "raw": True})
            bad = await client.call_tool("read_trace", {"trace_id": "../etc/passwd"})
            return answered, listed, tree, raw, bad

    answered, listed, tree, raw, bad = _run(main)
    entries = listed.structured_content["result"]
    assert [e["trace_id"] for e in entries] == [answered.structured_content["trace_id"]]
    assert entries[0]["question"] == "How long is it?"
    assert entries[0]["stop_reason"] == "final"
    assert "How long is it?" in tree.content[0].text
    assert '"type": "run_start"' in raw.content[0].text
    assert bad.is_error and "not a trace id" in bad.content[0].text


def _http(setup: dict[str, Path], root: Path, *extra: str):
    return start(["mcp", "--transport", "http", "--port", "0", "--config",
                  str(setup["config"]), "--trace-dir", str(root / "traces"), *extra],
                 home=root / "home", trace_dir=root / "traces", log=root / "mcp.log")


def test_http_answers_and_cancelling_the_call_stops_the_run(setup, tmp_path):
    live = _http(setup, tmp_path)
    try:
        async def main() -> Any:
            async with Client(f"{live.url}/mcp") as client:
                answered = await client.call_tool("answer", {"question": "How long?",
                                                             "context": "abcdefg"})
                started = time.monotonic()
                with anyio.move_on_after(1.0):  # cancel the call: the SDK tells the server
                    await client.call_tool("answer", {"question": "Loop.", "model": "slow"})
                gave_up = time.monotonic() - started
                for _ in range(100):  # wait for the cancelled run's trace to close
                    listed = await client.call_tool("list_traces", {})
                    entries = listed.structured_content["result"]
                    if entries and entries[0]["stop_reason"] is not None:
                        break
                    await anyio.sleep(0.05)
                return answered, gave_up, entries

        answered, gave_up, entries = _run(main)
    finally:
        live.stop()
    assert answered.structured_content["answer"] == "7"
    assert gave_up < 2
    assert entries[0]["stop_reason"] == "cancelled"
    from rlm.trace.tree import load

    node = load(tmp_path / "traces" / f"{entries[0]['trace_id']}.jsonl")
    assert node.elapsed_s is not None and node.elapsed_s < 4  # 30 turns would take 7.5 s


def test_http_needs_the_bearer_token_when_started_with_a_key(setup, tmp_path):
    live = _http(setup, tmp_path, "--api-key", "mcp-key-31f5")
    try:
        refused = httpx.post(f"{live.url}/mcp", json={"jsonrpc": "2.0", "id": 1,
                                                     "method": "ping"})
        assert refused.status_code == 401

        async def main() -> Any:
            headers = {"Authorization": "Bearer mcp-key-31f5"}
            import httpx2  # the HTTP client the MCP SDK is built on
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers=headers)
            transport = streamable_http_client(f"{live.url}/mcp", http_client=http)
            async with http, Client(transport) as client:
                return await client.call_tool("answer", {"question": "How long?",
                                                         "context": "ab"})

        assert _run(main).structured_content["answer"] == "2"
    finally:
        live.stop()
    assert "mcp-key-31f5" not in live.stderr()
