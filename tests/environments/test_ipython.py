"""What only the ``ipython`` environment does: interrupts, kernel deaths, a clean kernel."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from rlm.environments.ipython import IPythonEnvironment


def host(message):
    return {"text": f"echo:{message.get('prompt')}"}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def kernel():
    """One kernel for the tests below (starting one takes a couple of seconds)."""
    env = IPythonEnvironment(block_timeout_s=10.0, interrupt_grace_s=1.0)
    env.start(host)
    env.set_variable("context", "the context")
    yield env
    env.close()


def test_a_timeout_interrupts_the_block_and_keeps_variables(kernel):
    pid = kernel.kernel_pid
    result = kernel.execute("kept = 41\nprint('before')\nwhile True: pass", timeout_s=1.0)
    assert "TimeoutError" in result.error and "interrupted" in result.error
    assert "variables are kept" in result.error and result.stdout == "before\n"
    assert kernel.execute("print(kept + 1)").stdout == "42\n"
    assert kernel.kernel_pid == pid


def test_a_block_that_ignores_the_interrupt_gets_a_new_kernel(kernel):
    pid = kernel.kernel_pid
    code = ("lost = 1\nimport time\nwhile True:\n    try:\n        time.sleep(5)\n"
            "    except KeyboardInterrupt:\n        pass")
    result = kernel.execute(code, timeout_s=1.0)
    assert "did not stop" in result.error and "restarted" in result.error
    assert kernel.kernel_pid != pid and gone(pid)
    assert kernel.execute("print(context)").stdout == "the context\n"
    assert "NameError" in kernel.execute("lost").error


def test_a_kernel_killed_from_outside_is_reported_and_replaced(kernel):
    pid = kernel.kernel_pid
    started = kernel.scratch / "started"

    def kill_when_running():
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    result = kernel.execute("mine = 1\nopen('started', 'w').close()\nimport time\ntime.sleep(30)")
    killer.join()
    assert "ProcessDied" in result.error and "restarted" in result.error
    assert kernel.kernel_pid != pid and gone(pid)
    assert kernel.execute("print(context)").stdout == "the context\n"
    assert "NameError" in kernel.execute("mine").error
    assert kernel.execute("print(llm_query('again'))").stdout == "echo:again\n"


def test_no_host_variable_inside_limits_set_and_nothing_left_after_close(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    env = IPythonEnvironment()
    try:
        env.start(host)
        result = env.execute("import os, resource, subprocess\n"
                             "child = subprocess.Popen(['sleep', '60'])\n"
                             "memory = resource.getrlimit(resource.RLIMIT_AS)[0] >> 20\n"
                             "print('OPENAI_API_KEY' in os.environ, memory, child.pid)")
        seen, memory, child = result.stdout.split()
        assert (seen, memory) == ("False", "4096")
        pid, scratch = env.kernel_pid, env.scratch
    finally:
        env.close()
    assert gone(pid) and gone(int(child))
    assert not scratch.exists()
