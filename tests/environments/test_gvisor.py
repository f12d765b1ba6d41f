"""The gvisor environment's bundle and the walls it adds to the shared runner."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rlm.environments.gvisor import GVisorEnvironment, _write_bundle
from tests.environments.conftest import require_available


def test_a_venv_under_tmp_shows_through_the_tmp_tmpfs(tmp_path: Path):
    # The interpreter of a venv cloned under /tmp is bound onto its path, not a symlink in
    # the root: a symlink there would be hidden by the tmpfs mounted at /tmp.
    bundle, scratch, control = tmp_path / "b", tmp_path / "s", tmp_path / "c"
    _write_bundle(bundle, ["python"], {}, [], [(sys.executable, "/tmp/clone/.venv/bin/python")],
                  scratch, control, 64)
    mounts = json.loads((bundle / "config.json").read_text())["mounts"]
    destinations = [m["destination"] for m in mounts]
    assert destinations.index("/tmp") < destinations.index("/tmp/clone/.venv/bin/python")
    bind = mounts[destinations.index("/tmp/clone/.venv/bin/python")]
    assert bind["source"] == os.path.realpath(sys.executable) and "ro" in bind["options"]
    assert not (bundle / "rootfs/tmp/clone/.venv/bin/python").is_symlink()
    assert "size=64m" in mounts[destinations.index("/tmp")]["options"]


def test_tmp_is_bounded_and_the_control_directory_read_only():
    require_available("gvisor")
    with GVisorEnvironment(tmpfs_mb=8) as env:
        env.start(lambda message: {"text": "x"})
        result = env.execute(
            "written = 0\ntry:\n    with open('/tmp/x', 'wb') as f:\n"
            "        for _ in range(16):\n            f.write(b'0' * (1 << 20)); written += 1\n"
            "except OSError as exc:\n    print(written, exc.errno)\n"
            "try:\n    open('/rlm/planted', 'w')\nexcept OSError as exc:\n    print(exc.errno)")
        assert result.stdout.split() == ["8", "28", "13"], result  # ENOSPC, then EACCES
