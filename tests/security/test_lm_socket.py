"""The LM handler's socket under attack: what a peer can make the host spend.

Model code, or any local process, can connect to the host's ``LMServer``.  Without the
token a connection must cost the host no more than the fixed-size preamble and a thread
for ``auth_timeout_s``; the connections served at once are capped; with the token (model
code can find it) a hostile frame gets an error reply and the server goes on serving.
Each test fails when the protection it names is taken away.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.bridge import protocol
from rlm.bridge.runner import lm_caller
from rlm.bridge.tcp import LMServer

MB = 1 << 20


def echo(message):
    return {"text": message.get("prompt", "")}


def ask(server: LMServer, prompt: str = "ping") -> dict:
    """One request as a REPL makes it."""
    return lm_caller(server.address, server.token)({"op": "llm_query", "prompt": prompt})


def connect(server: LMServer, timeout_s: float = 5.0) -> socket.socket:
    address = server.address
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(address)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection; ``TimeoutError`` if it keeps
    the connection open past the socket's timeout."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture(params=["tcp", "unix"])
def unix_path(request) -> Iterator[Path | None]:
    if request.param == "tcp":
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="rlm-") as folder:  # short: a socket path is
        yield Path(folder) / "lm.sock"                            # at most 107 bytes


def test_a_peer_without_the_token_cannot_make_the_host_buffer_a_frame(unix_path):
    # Three peers each send the header of a 150 MB frame and its body, with no preamble.
    # The server reads the first PREAMBLE_BYTES, refuses them and cuts the connection, so
    # no sender gets its 150 MB through (the socket buffers hold a few MB) and the host
    # allocates nothing near a frame.
    size = 150 * MB
    frame = bytearray(4 + size)
    frame[:4] = struct.pack(">I", size)
    outcomes: list[str] = []
    with LMServer(echo, unix_path=unix_path) as server:

        def attack() -> None:
            with connect(server, timeout_s=10) as sock:
                try:
                    sock.sendall(frame)
                except OSError:
                    outcomes.append("cut")
                else:
                    outcomes.append("all sent")

        tracemalloc.start()
        try:
            attackers = [threading.Thread(target=attack) for _ in range(3)]
            for thread in attackers:
                thread.start()
            for thread in attackers:
                thread.join(30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert outcomes == ["cut"] * 3
        assert peak < 8 * MB, f"the host allocated {peak / MB:.1f} MB for tokenless peers"
        wait_until(lambda: server.refused == 3 and server.connections == 0)
        assert ask(server) == {"text": "ping"}


def test_an_authenticated_frame_over_the_limit_is_refused_from_its_header():
    size = 150 * MB
    frame = bytearray(4 + size)
    frame[:4] = struct.pack(">I", size)
    with LMServer(echo, max_message_bytes=1 * MB) as server:
        tracemalloc.start()
        try:
            with connect(server, timeout_s=10) as sock:
                sock.sendall(protocol.preamble(server.token))
                with pytest.raises(OSError):
                    sock.sendall(frame)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * MB
        assert ask(server) == {"text": "ping"}


def test_stalled_connections_are_dropped_after_the_auth_timeout(unix_path):
    with LMServer(echo, unix_path=unix_path, auth_timeout_s=0.5,
                  max_unauthenticated=100) as server:
        threads_before = threading.active_count()
        stalled = [connect(server) for _ in range(100)]
        try:
            started = time.monotonic()
            for sock in stalled:  # without the timeout: TimeoutError after 5 s
                assert b"no preamble within" in read_to_end(sock)
            assert time.monotonic() - started < 3
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: server.connections == 0
                   and threading.active_count() <= threads_before)
        assert server.refused == 100
        assert ask(server) == {"text": "ping"}


def _connection_threads() -> int:
    """Threads serving a connection of an LM server (socketserver names them so); other
    tests' threads, which may come and go meanwhile, do not count."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_silent_connections_hold_at_most_max_unauthenticated_threads(unix_path):
    with LMServer(echo, unix_path=unix_path, auth_timeout_s=1.0,
                  max_unauthenticated=4) as server:
        threads_before = _connection_threads()
        peak = threads_before
        stalled = [connect(server) for _ in range(40)]
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                peak = max(peak, _connection_threads())
                time.sleep(0.01)
            started = time.monotonic()
            assert ask(server) == {"text": "ping"}  # queued behind them, served in time
            waited = time.monotonic() - started
        finally:
            for sock in stalled:
                sock.close()
        # without the limit: a thread for each of the 40 for the whole auth timeout
        assert peak - threads_before <= 4
        assert waited < 15


def test_a_preamble_trickled_byte_by_byte_gets_no_more_time():
    # Even the right preamble, sent a byte every 50 ms (2 s in all), is cut at the
    # deadline of 0.5 s: the timeout bounds the whole preamble, not each read.
    with LMServer(echo, auth_timeout_s=0.5) as server, connect(server) as sock:
        right = protocol.preamble(server.token)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for byte in right:
                    sock.send(bytes([byte]))
                    time.sleep(0.05)

        sender = threading.Thread(target=trickle)
        started = time.monotonic()
        sender.start()
        try:
            wait_until(lambda: server.refused == 1, timeout_s=1.8)
            assert time.monotonic() - started < 1.8
        finally:
            sender.join(5)
        wait_until(lambda: server.connections == 0)


def test_connections_over_the_cap_are_closed_at_once_without_a_thread():
    with LMServer(echo, auth_timeout_s=30, max_connections=8) as server:
        threads_before = threading.active_count()
        held = [connect(server) for _ in range(8)]
        try:
            wait_until(lambda: server.connections == 8)
            extra = [connect(server) for _ in range(100)]
            try:
                for sock in extra:  # without the cap: held for 30 s, TimeoutError after 5
                    assert b"at most 8 connections" in read_to_end(sock)
                assert threading.active_count() <= threads_before + 8
            finally:
                for sock in extra:
                    sock.close()
            assert server.turned_away == 100
            assert server.connections == 8
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: server.connections == 0)
        assert ask(server) == {"text": "ping"}


def test_an_idle_connection_is_closed_but_a_slow_reply_is_not():
    def slow(message):
        time.sleep(1.0)  # longer than the idle timeout: the host computing is not idleness
        return echo(message)

    with LMServer(slow, idle_timeout_s=0.3) as server, connect(server) as sock:
        stream = protocol.SocketStream(sock)
        stream.write(protocol.preamble(server.token))
        started = time.monotonic()
        protocol.send(stream, {"op": "llm_query", "prompt": "slow"})
        assert protocol.recv(stream) == {"text": "slow"}
        assert read_to_end(sock) == b""  # without the idle timeout: TimeoutError after 5 s
        assert 1.0 + 0.3 <= time.monotonic() - started < 4  # the reply, then the idle time
        wait_until(lambda: server.connections == 0)


def test_a_deeply_nested_frame_gets_an_error_reply_and_the_server_goes_on(unix_path, caplog):
    body = b"[" * 200_000 + b"]" * 200_000
    with LMServer(echo, unix_path=unix_path) as server:
        with connect(server) as other:  # a connection open meanwhile keeps working
            other_stream = protocol.SocketStream(other)
            other_stream.write(protocol.preamble(server.token))
            with caplog.at_level(logging.ERROR, logger="rlm.bridge.tcp"), \
                    connect(server) as sock:
                sock.sendall(protocol.preamble(server.token) + struct.pack(">I", len(body))
                             + body)
                reply = protocol.recv(protocol.SocketStream(sock))
                assert reply["error"]["type"] == "BridgeProtocolError"
                assert "RecursionError" in reply["error"]["message"]
                assert read_to_end(sock) == b""
            protocol.send(other_stream, {"op": "llm_query", "prompt": "still here"})
            assert protocol.recv(other_stream) == {"text": "still here"}
        assert ask(server) == {"text": "ping"}
    # nothing failed unexpectedly in a server thread
    assert not [r for r in caplog.records if r.name == "rlm.bridge.tcp"]


def test_a_failure_in_a_connection_thread_is_logged_and_ends_only_that_connection(caplog):
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot even say what went wrong")

    def broken(message):
        if message.get("prompt") == "break":
            raise Unprintable
        return echo(message)

    with LMServer(broken) as server:
        with caplog.at_level(logging.ERROR, logger="rlm.bridge.tcp"):
            reply = ask(server, "break")
        assert "cannot be reached" in reply["error"]["message"]
        assert any("connection failed" in r.getMessage() for r in caplog.records)
        wait_until(lambda: server.connections == 0)
        assert ask(server) == {"text": "ping"}


def test_a_lone_surrogate_travels_to_the_host_and_back():
    with LMServer(echo) as server:
        assert ask(server, "a \ud800 b \udfff") == {"text": "a \ud800 b \udfff"}


def test_close_cuts_the_open_connections():
    with LMServer(echo) as server:
        sock = connect(server)
        sock.sendall(protocol.preamble(server.token))
        wait_until(lambda: server.connections == 1)
    try:
        assert read_to_end(sock) == b""
    finally:
        sock.close()
    wait_until(lambda: server.connections == 0)
