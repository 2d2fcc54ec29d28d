"""Signals become exceptions that run cleanup; guarded children and folders never outlive their owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_app.lifecycle import Terminated, stop_on_signals

# The owner: starts a guarded `sleep`, makes a guarded folder, says what it made, then waits to be killed
# (or, with "clean", stops both itself and exits).
OWNER = textwrap.dedent("""
    import json, sys, time
    from stream_app import lifecycle
    from stream_app.lifecycle import remove_folder, spawn_child, stop_child, temporary_folder

    child = spawn_child(["sleep", "600"], grace_s=2)
    folder = temporary_folder(prefix="stream-app-test-")
    guardian = lifecycle._client._process.pid
    print(json.dumps({"child": child.pid, "folder": str(folder), "guardian": guardian}), flush=True)
    if sys.argv[1] == "clean":
        stop_child(child)
        remove_folder(folder)
    else:
        time.sleep(600)
""")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may stay a zombie where pid 1 does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _eventually(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _start_owner(mode: str, tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, mode], env=env, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    with owner.stdout:
        made = json.loads(owner.stdout.readline())
    return owner, made


def test_sigterm_raises_terminated_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as raised, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler long before
    assert raised.value.signum == signal.SIGTERM
    assert isinstance(raised.value, KeyboardInterrupt), "handled wherever Ctrl-C is"
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sighup_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_sigkilled_owner_leaves_no_child_and_no_folder(tmp_path):
    owner, made = _start_owner("wait", tmp_path)
    child, folder, guardian = int(made["child"]), Path(str(made["folder"])), int(made["guardian"])
    try:
        assert _running(child) and folder.is_dir()
        owner.kill()
        owner.wait()
        assert _eventually(lambda: not _running(child)), "the guardian stopped the child"
        assert _eventually(lambda: not folder.exists()), "the guardian removed the folder"
        assert _eventually(lambda: not _running(guardian)), "then the guardian ended"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_clean_stop_leaves_nothing_and_the_guardian_exits_with_its_owner(tmp_path):
    owner, made = _start_owner("clean", tmp_path)
    child, folder, guardian = int(made["child"]), Path(str(made["folder"])), int(made["guardian"])
    assert owner.wait(timeout=60) == 0
    assert not _running(child) and not folder.exists()
    assert not _running(guardian), "the owner waited for its guardian to end at exit"
