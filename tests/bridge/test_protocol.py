"""The typed control protocol and the value codec: one definition, every carrier agrees."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from rlm.bridge import broker, protocol, values
from rlm.bridge.runner import ControlHandler
from rlm.context import FolderContext
from rlm.environments.files import write_value
from rlm.types import ExecResult

MESSAGES = [
    protocol.Init(lm_address="/tmp/lm.sock", token="t", capture_limit=10),
    protocol.Init(lm_address=["127.0.0.1", 4000]),
    protocol.Init(),
    protocol.Tools({"shout": "def shout(x):\n    return x.upper()"}),
    protocol.SetVar("context", "text", "/control/var-context.txt"),
    protocol.SetVar("raw", "bytes"),
    protocol.Exec("print('\ud800 é')", timeout_s=2.5),
    protocol.Exec("x = 1"),
    protocol.Shutdown(),
    protocol.Ready(pid=42),
    protocol.Ok(),
    protocol.Failure.of(RuntimeError("it broke")),
    protocol.LMRequest(7, {"op": "llm_query", "prompt": "q"}),
    protocol.LMReply(7, {"text": "a"}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{m.type}-{m}"[:40])
def test_every_message_type_round_trips_through_a_frame(message):
    frame = protocol.recv(protocol.FileStream(io.BytesIO(protocol.encode(message.to_dict())),
                                              None))
    assert type(message).from_dict(frame) == type(message).from_dict(message.to_dict())
    assert frame["type"] == message.type
    if message.type in protocol.CONTROL:
        assert protocol.control_message(frame) == type(message).from_dict(frame)


def test_every_message_type_is_covered_above():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    assert {cls.type for cls in subclasses(protocol.Message)} == {m.type for m in MESSAGES}


@pytest.mark.parametrize("frame", [
    {"type": "exec"},                                     # a field missing
    {"type": "exec", "code": 3},                          # of the wrong kind
    {"type": "exec", "code": "x", "timeout_s": True},     # a bool is not a number
    {"type": "exec", "code": "x", "timeout_s": "1"},
    {"type": "set_var", "name": "no good", "format": "text"},
    {"type": "set_var", "name": "x"},
    {"type": "tools", "sources": {"f": 1}},
    {"type": "tools", "sources": ["def f(): pass"]},
    {"type": "init", "token": None},
    {"type": "init", "capture_limit": "big"},
    {"type": "eval", "code": "x"},                        # no such operation
    {"code": "x"},
    {"type": ["exec"]},
])
def test_a_malformed_control_frame_is_refused(frame):
    with pytest.raises(protocol.ProtocolError):
        protocol.control_message(frame)
    reply = ControlHandler().handle(frame)  # the REPL answers it, and goes on
    assert reply["type"] == "error" and reply["error"]["type"] == "ProtocolError"


def test_a_reply_of_another_type_or_an_error_frame_is_not_taken_for_the_expected_one():
    assert protocol.expect_reply({"type": "ok"}, "ok") == {}
    assert protocol.expect_reply({"type": "result", "stdout": "x"}, "result") == {"stdout": "x"}
    with pytest.raises(protocol.ProtocolError, match="expected 'result', got 'ok'"):
        protocol.expect_reply({"type": "ok"}, "result")
    with pytest.raises(protocol.Refused, match=r"^RuntimeError: it broke$"):
        protocol.expect_reply(protocol.Failure.of(RuntimeError("it broke")).to_dict(), "ok")
    with pytest.raises(protocol.Refused, match="malformed"):
        protocol.expect_reply({"type": "error", "error": "text"}, "ok")


def test_the_error_envelope_has_one_shape():
    assert protocol.error_reply(ValueError("bad")) == {
        "error": {"type": "ValueError", "message": "bad"}}
    assert protocol.error_reply("Cancelled", "stop") == {
        "error": {"type": "Cancelled", "message": "stop"}}
    assert protocol.error_body(KeyError("k")) == {"type": "KeyError", "message": "'k'"}
    assert protocol.error_text({"type": "Cancelled", "message": "stop"}) == "Cancelled: stop"


def test_the_ops_table_is_what_the_runner_and_the_broker_dispatch():
    assert set(protocol.OPS) == {"init", "tools", "set_var", "exec", "shutdown"}
    assert set(ControlHandler().ops) == set(protocol.OPS)
    assert set(broker.CONTROL) == set(protocol.OPS) - {"init"}  # the broker's init: its launch
    assert {op: cls.reply for op, cls in protocol.CONTROL.items()} == protocol.OPS


def test_the_runner_answers_each_operation_with_its_reply_type(tmp_path: Path):
    handler = ControlHandler()
    path, fmt = write_value(tmp_path, "context", {"k": ["\udcff", 1]}, owner="test")
    script = [
        protocol.Init(lm_address=str(tmp_path / "no.sock"), token="t"),
        protocol.Tools({"shout": "def shout(x):\n    return x.upper() + '!'"}),
        protocol.SetVar("context", fmt, str(path)),
        protocol.Exec("print(shout(context['k'][0] + 'a'))"),
        protocol.Shutdown(),
    ]
    replies = [handler.handle(message.to_dict()) for message in script]
    assert [reply["type"] for reply in replies] == [protocol.OPS[m.type] for m in script]
    result = ExecResult.from_dict(protocol.expect_reply(replies[3], "result"))
    assert result.stdout == "\udcffA!\n" and result.error is None
    assert handler.done


def test_the_runner_wants_init_first_and_reports_failures_as_error_frames(tmp_path: Path):
    handler = ControlHandler()
    first = handler.handle(protocol.Exec("1").to_dict())
    assert first["type"] == "error" and "init first" in first["error"]["message"]
    assert handler.handle(protocol.Init().to_dict())["type"] == "error"  # no LM route at all
    handler.handle(protocol.Init(lm_address=str(tmp_path / "x"), token="t").to_dict())
    broken = handler.handle(protocol.Tools({"bad": "raise ValueError('nope')"}).to_dict())
    assert protocol.error_text(broken["error"]).startswith("RuntimeError: tool 'bad'")
    missing = handler.handle(protocol.SetVar("x", "text", str(tmp_path / "absent")).to_dict())
    assert missing["error"]["type"] == "FileNotFoundError"


def test_a_frame_in_a_file_is_read_once_and_answered_as_ascii_json(tmp_path: Path):
    handler = ControlHandler()
    frame = tmp_path / "frame.json"
    frame.write_bytes(protocol.to_json(protocol.Init(lm_address=str(tmp_path / "s")).to_dict()))
    assert json.loads(handler.handle_file(str(frame))) == {"type": "ok"}
    assert not frame.exists()
    frame.write_bytes(protocol.to_json(protocol.Exec("print('é')").to_dict()))
    reply = handler.handle_file(str(frame))
    assert reply.isascii() and json.loads(reply)["stdout"] == "é\n"
    assert json.loads(handler.handle_file(str(frame)))["type"] == "error"  # gone: an error


class Trickle(io.RawIOBase):
    """A stream whose readinto fills at most ``step`` bytes: pieces end anywhere."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = memoryview(data), step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        taken = self.data[:min(self.step, len(buffer))]
        buffer[:len(taken)] = taken
        self.data = self.data[len(taken):]
        return len(taken)


@pytest.mark.parametrize("value", [
    "plain", "", "é" * 10 + "\ud800 lone", b"\x00\xff" * 5, bytearray(b"abc"),
    memoryview(b"view"), {"k": ["\udcff", 1, None, 2.5]}, [1, "two"], 3, None,
])
def test_each_kind_of_value_round_trips(value):
    encoded = values.encode_value(value)
    data = b"".join(encoded.pieces())
    assert encoded.size == len(data)
    expected = bytes(value) if isinstance(value, bytearray | memoryview) else value
    assert values.decode_value(encoded.format, data) == expected
    assert encoded.format == ("text" if isinstance(value, str) else "bytes"
                              if isinstance(value, bytes | bytearray | memoryview) else "json")


def test_a_large_value_streams_in_pieces_that_split_characters(monkeypatch):
    monkeypatch.setattr(values, "PIECE", 1000)  # many pieces without a 4 MiB value
    text = "é" * 2_501 + "\ud800end"
    encoded = values.encode_value(text)
    pieces = list(encoded.pieces())
    assert len(pieces) == 3 and encoded.size == sum(map(len, pieces)) > len(text)
    body = values.receive(Trickle(b"".join(pieces), 333).readinto, encoded.size)
    assert values.decode_value("text", body) == text
    with pytest.raises(EOFError, match="ended after 10 of 20 bytes"):
        values.receive(Trickle(b"x" * 10, 4).readinto, 20)


def test_any_mapping_travels_as_an_object_and_other_values_are_refused(tmp_path: Path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta")
    encoded = values.encode_value({"folder": FolderContext(tmp_path)})
    assert values.decode_value("json", b"".join(encoded.pieces())) == {
        "folder": {"a.txt": "alpha", "sub/b.txt": "beta"}}
    for unsendable in ({1, 2}, object()):
        with pytest.raises(TypeError):
            values.encode_value(unsendable)
    with pytest.raises(ValueError, match="unknown value format"):
        values.decode_value("pickle", b"x")
    with pytest.raises(UnicodeDecodeError):
        values.decode_value("text", b"\xff")


def test_broker_settings_cross_the_command_line_whole():
    settings = broker.BrokerSettings(block_timeout_s=1.5, grace_s=0.25,
                                     request_timeout_s=123456789.5, host_timeout_s=7,
                                     capture_limit=1234)
    argv = ["--port", "0", *settings.to_argv(), "--exit-on-stdin-eof"]
    assert broker.BrokerSettings.from_argv(argv) == settings
    assert broker.BrokerSettings.from_argv([]) == broker.BrokerSettings()
    assert broker.BrokerSettings().capture_limit == protocol.CAPTURE_LIMIT


def test_a_broken_runtime_is_an_http_500_not_model_text(monkeypatch):
    # A failure of the runtime itself (not of the model's code) must reach the host as an
    # EnvError; it cannot be provoked from model code, so the runtime is made to fail.
    hub = broker.Broker("token")
    monkeypatch.setattr(hub.runtime, "run_cell", lambda code: 1 / 0)
    status, reply = broker._route(hub, "POST /exec", b'{"code": "1"}', {})
    assert status == 500 and reply["error"]["type"] == "ReplBroke"
    assert "ZeroDivisionError" in reply["error"]["message"]


def test_the_guest_knows_every_limit_the_host_can_raise():
    from rlm import errors
    from rlm.bridge.guest import LIMIT_KINDS

    def names(cls):
        return {cls.__name__} | {n for sub in cls.__subclasses__() for n in names(sub)}

    assert names(errors.LimitExceeded) | {"Cancelled"} == LIMIT_KINDS
