"""The socket protocol: framing, the token, limits, concurrency."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from rlm.bridge import protocol
from rlm.bridge.tcp import LMServer


def slow_echo(message):
    time.sleep(0.2)
    return {"text": message.get("prompt", "")}


class Trickle(io.RawIOBase):
    """A stream that returns one byte per read: short reads everywhere."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:1], self.data[1:]
        return chunk


def test_frames_survive_short_reads():
    message = {"op": "llm_query", "prompt": "é" * 1000}
    stream = protocol.FileStream(Trickle(protocol.encode(message)), None)
    assert protocol.recv(stream) == message


class Sip(io.RawIOBase):
    """A raw file whose write() takes at most 7 bytes: short writes, as gVisor's pipes do."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        taken = bytes(data[:7])
        self.data += taken
        return len(taken)


def test_frames_survive_short_writes():
    message = {"type": "result", "stdout": "y" * 70_000}
    sink = Sip()
    protocol.send(protocol.FileStream(None, sink), message)
    assert protocol.recv(protocol.FileStream(io.BytesIO(bytes(sink.data)), None)) == message


def test_oversized_and_truncated_frames_are_refused():
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"x": "y" * 100}, max_bytes=10)
    big = protocol.encode({"x": "y" * 100})
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(protocol.FileStream(io.BytesIO(big), None), max_bytes=10)
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(protocol.FileStream(io.BytesIO(big[:-3]), None))


@pytest.mark.parametrize("unix", [False, True])
def test_requests_need_the_token(tmp_path, unix):
    with LMServer(slow_echo, unix_path=tmp_path / "lm.sock" if unix else None) as server:
        ok = protocol.request(server.address, {"op": "llm_query", "prompt": "hi",
                                               "token": server.token})
        assert ok == {"text": "hi"}
        for token in (None, "wrong"):
            message = {"op": "llm_query", "prompt": "hi"}
            if token:
                message["token"] = token
            reply = protocol.request(server.address, message)
            assert reply["error"]["type"] == "BridgeProtocolError" and "text" not in reply
        assert server.refused == 2
        if not unix:
            assert server.address[0] == "127.0.0.1"


def test_concurrent_requests_are_served_at_once():
    with LMServer(slow_echo) as server:
        replies = []

        def ask(i):
            replies.append(protocol.request(server.address, {"op": "llm_query", "prompt": str(i),
                                                             "token": server.token}))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(64)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(int(r["text"]) for r in replies) == list(range(64))
        assert time.monotonic() - started < 64 * 0.2 / 4  # concurrent, not one by one


def test_close_frees_the_port():
    server = LMServer(slow_echo)
    server.start()
    address = server.address
    server.close()
    server.close()
    with pytest.raises(OSError), socket.create_connection(address, timeout=1):
        pass


def test_control_channel_calls_run_concurrently_and_replies_find_their_caller():
    # The guest side of a socket pair plays the REPL process; the host side collects all
    # eight requests before answering any, in reverse order: calls made one at a time
    # would never get there.
    from rlm.bridge.runner import control_caller

    guest_end, host_end = socket.socketpair()
    guest = protocol.FileStream(guest_end.makefile("rb", buffering=0),
                                guest_end.makefile("wb", buffering=0))
    host = protocol.FileStream(host_end.makefile("rb", buffering=0),
                               host_end.makefile("wb", buffering=0))
    call = control_caller(guest)

    def host_side():
        pending = [protocol.recv(host) for _ in range(8)]
        for frame in reversed(pending):
            reply = {"text": "echo:" + frame["request"]["prompt"]}
            protocol.send(host, {"type": "lm_reply", "id": frame["id"], "reply": reply})

    threading.Thread(target=host_side, daemon=True).start()
    answers: dict[int, str] = {}

    def ask(i):
        answers[i] = call({"op": "llm_query", "prompt": str(i)})["text"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {i: f"echo:{i}" for i in range(8)}
    for end in (host.reader, host.writer, host_end):  # the host goes away:
        end.close()  # the next call fails cleanly
    assert "no LM reply" in call({"op": "llm_query", "prompt": "x"})["error"]["message"]
    guest_end.close()
