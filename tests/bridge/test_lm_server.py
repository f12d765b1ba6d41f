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


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb\udc80", "\ud800 and \U0001f600", "é\x00"])
def test_any_str_round_trips_even_a_lone_surrogate(text):
    message = {"type": "result", "stdout": text, text: [text]}
    frame = protocol.encode(message)
    assert protocol.recv(protocol.FileStream(io.BytesIO(frame), None)) == message


def test_a_high_and_a_low_surrogate_side_by_side_come_back_as_their_character():
    # JSON cannot tell them from the character they pair into (in its \u escapes both
    # are "\ud83d\ude00")
    frame = protocol.encode({"stdout": "\ud83d\ude00 \ud800"})
    assert protocol.recv(protocol.FileStream(io.BytesIO(frame), None)) == {
        "stdout": "\U0001f600 \ud800"}


@pytest.mark.parametrize("body", [b"[" * 200_000 + b"]" * 200_000,
                                  b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                  b"\xff\xfe", b"[1, 2]", b"{", b""])
def test_a_frame_that_cannot_be_decoded_is_a_protocol_error(body):
    frame = len(body).to_bytes(4, "big") + body
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(protocol.FileStream(io.BytesIO(frame), None))


def test_a_message_json_cannot_hold_is_a_protocol_error():
    cycle: list = []
    cycle.append(cycle)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for message in ({"x": cycle}, {"x": deep}, {(1, 2): "tuple key"}):
        with pytest.raises(protocol.ProtocolError):
            protocol.encode(message)


def test_oversized_and_truncated_frames_are_refused():
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"x": "y" * 100}, max_bytes=10)
    big = protocol.encode({"x": "y" * 100})
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(protocol.FileStream(io.BytesIO(big), None), max_bytes=10)
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(protocol.FileStream(io.BytesIO(big[:-3]), None))


def refused(address, opening: bytes) -> bool:
    """Whether a request opened with ``opening`` instead of the right preamble gets no
    answer: an error frame, or the connection cut (its unread request resets it)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    body = protocol.encode({"op": "llm_query", "prompt": "x" * 64})  # longer than a preamble
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        try:
            sock.sendall(opening + body)
            reply = protocol.recv(protocol.SocketStream(sock))
        except (OSError, EOFError):
            return True
    return reply["error"]["type"] == "BridgeProtocolError" and "text" not in reply


@pytest.mark.parametrize("unix", [False, True])
def test_requests_need_the_token(tmp_path, unix):
    with LMServer(slow_echo, unix_path=tmp_path / "lm.sock" if unix else None) as server:
        ok = protocol.request(server.address, {"op": "llm_query", "prompt": "hi"},
                              token=server.token)
        assert ok == {"text": "hi"}
        right = protocol.preamble(server.token)
        one_bit_off = right[:-1] + bytes([right[-1] ^ 1])
        for opening in (b"", protocol.preamble("wrong"), one_bit_off, protocol.AUTH_MAGIC):
            assert refused(server.address, opening)
        assert server.refused == 4
        if not unix:
            assert server.address[0] == "127.0.0.1"


def test_a_refused_peer_is_told_why():
    with LMServer(slow_echo) as server:
        for opening, why in ((protocol.preamble("wrong"), "wrong token"),
                             (b"GET / HTTP/1.1\r\n" + b"x" * 40, "must open with")):
            with socket.create_connection(server.address, timeout=5) as sock:
                sock.sendall(opening[:protocol.PREAMBLE_BYTES])  # nothing unread: no reset
                reply = protocol.recv(protocol.SocketStream(sock))
                assert why in reply["error"]["message"]
                assert sock.recv(1) == b""


def test_one_connection_carries_many_requests():
    with LMServer(slow_echo) as server, socket.create_connection(server.address) as sock:
        stream = protocol.SocketStream(sock)
        stream.write(protocol.preamble(server.token))
        for i in range(3):
            protocol.send(stream, {"op": "llm_query", "prompt": str(i)})
            assert protocol.recv(stream) == {"text": str(i)}


def test_concurrent_requests_are_served_at_once():
    with LMServer(slow_echo) as server:
        replies = []

        def ask(i):
            replies.append(protocol.request(server.address, {"op": "llm_query", "prompt": str(i)},
                                            token=server.token))

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


def test_printing_a_lone_surrogate_keeps_the_repl_and_its_variables():
    from rlm import registry
    from tests.environments.conftest import require_available

    require_available("subprocess")
    with registry.create_environment("subprocess", {}) as env:
        env.start(lambda message: {"text": "echo:" + message.get("prompt", "")})
        assert env.execute("kept = 41").error is None
        result = env.execute("print('\\ud800', llm_query('\\udfff'))\nkept += 1")
        assert result.error is None and result.stdout == "\ud800 echo:\udfff\n"
        assert env.execute("print(kept)").stdout == "42\n"
