"""The host's file handling for REPL processes: nothing a guest plants is followed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rlm.bridge.runner import load_value
from rlm.environments.files import make_dir, write_file, write_value
from rlm.environments.subprocess_env import SubprocessEnvironment
from rlm.errors import EnvError


def test_a_planted_link_is_replaced_not_followed(tmp_path: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    planted = tmp_path / "var-context.txt"
    planted.symlink_to(victim)
    write_file(planted, b"the host's data")
    assert victim.read_text() == "original"  # open() would have written through the link
    assert not planted.is_symlink() and planted.read_bytes() == b"the host's data"


def test_a_planted_fifo_does_not_block_the_host(tmp_path: Path):
    fifo = tmp_path / "var-history.json"
    os.mkfifo(fifo)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (write_file(fifo, b"[]"), done.set()),
                              daemon=True)
    worker.start()
    assert done.wait(5), "opening the FIFO for writing would block until a reader comes"
    assert fifo.read_bytes() == b"[]"


def test_a_failed_write_leaves_no_file(tmp_path: Path):
    def pieces():
        yield b"half"
        raise RuntimeError("the value broke")

    with pytest.raises(RuntimeError):
        write_file(tmp_path / "x", pieces())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["plain", "lone \ud800 surrogate", b"\x00\xff",
                                   {"k": ["\udcff", 1]}, [1, 2, 3]])
def test_values_round_trip_to_the_runner(tmp_path: Path, value):
    path, fmt = write_value(tmp_path, "context", value, owner="test")
    assert load_value(str(path), fmt) == value


def test_a_value_json_cannot_hold_is_a_clear_error(tmp_path: Path):
    with pytest.raises(EnvError, match="cannot be sent to a separate process"):
        write_value(tmp_path, "context", {1, 2}, owner="test")


def test_make_dir_sets_the_mode_and_refuses_an_existing_path(tmp_path: Path):
    made = make_dir(tmp_path / "control", 0o750)
    assert made.stat().st_mode & 0o777 == 0o750
    (tmp_path / "planted").symlink_to(tmp_path)
    with pytest.raises(FileExistsError):
        make_dir(tmp_path / "planted", 0o700)


def test_the_control_directory_is_the_hosts_and_the_scratch_the_guests():
    with SubprocessEnvironment() as env:
        env.start(lambda message: {"text": "x"})
        assert env.home is not None and env.control is not None and env.scratch is not None
        assert env.control.parent == env.home == env.scratch.parent
        assert env.control.stat().st_uid == os.geteuid()
        assert (env.control / "runner.py").is_file()
        where = env.execute("import os\nprint(os.getcwd(), os.getuid())").stdout.split()
        assert where[0] == str(env.scratch)
        if os.geteuid() == 0:  # as root the REPL runs as a uid of its own
            assert int(where[1]) == env.uid != 0
            assert env.scratch.stat().st_uid == env.uid
            denied = env.execute(f"open({str(env.control / 'x')!r}, 'w')")
            assert denied.error is not None and "Permission" in denied.error
