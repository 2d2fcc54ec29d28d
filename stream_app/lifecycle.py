"""Children that never outlive the command that started them, and signals that stop a command cleanly.

Every child a command starts (the broker's JVM, the demo's worker) runs in a process group of its own
and is registered, with each temporary folder, with a guardian: a small process in a session of its
own that reads a pipe whose write end only the command holds. However the command ends, SIGKILL
included, the kernel closes that pipe; the guardian then stops the groups still registered (SIGTERM,
SIGKILL after their grace) and removes the folders still registered. A clean stop unregisters each
child and folder as it goes, so after one the guardian has nothing left to do.

A guardian rather than a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): it also removes the
folders, it gives the children a graceful stop first (a broker with kept data closes its logs), it
does not fire when merely the thread that started a child ends, and it is not Linux-only.

Run as ``python -m stream_app.lifecycle`` it is the guardian itself (standard library only).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Terminated", "stop_on_signals", "spawn_child", "stop_child", "temporary_folder", "remove_folder"]

log = logging.getLogger(__name__)

_KILL_WAIT_S = 5.0  # after SIGKILL, how long the guardian waits for a group to vanish before removing folders


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that cleanup runs as it does after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise :class:`Terminated`, as SIGINT raises KeyboardInterrupt.

    ``finally`` blocks and context managers then stop children and remove folders. A signal that is
    ignored (``nohup`` ignores SIGHUP) stays ignored; outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def spawn_child(cmd: Sequence[str], *, grace_s: float = 10.0, **popen_options: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a process group of its own, stopped by the guardian if this process dies.

    ``grace_s`` is how long the guardian waits after SIGTERM before it sends SIGKILL.
    """
    guardian = _guardian()
    process = subprocess.Popen(list(cmd), start_new_session=True, **popen_options)
    guardian.send("+group", process.pid, grace_s)
    return process


def stop_child(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM to the child's process group, SIGKILL after ``timeout_s``; then unregister it."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop within %.0f s of SIGTERM: killing it", process.pid, timeout_s)
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    _forget("-group", process.pid)


def temporary_folder(prefix: str) -> Path:
    """A new folder under the temporary directory, removed by the guardian if this process dies."""
    guardian = _guardian()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    guardian.send("+path", str(path))
    return path


def remove_folder(path: Path) -> None:
    """Remove a folder made by :func:`temporary_folder` and unregister it."""
    shutil.rmtree(path, ignore_errors=True)
    _forget("-path", str(path))


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _GuardianClient:
    """This process's end of the pipe to its guardian."""

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        read_end, self._write_end = os.pipe()  # both non-inheritable: no other child holds the write end
        try:
            self._process = subprocess.Popen([sys.executable, "-m", __name__], stdin=read_end,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True)
        finally:
            os.close(read_end)
        self._lock = threading.Lock()
        self._closed = False

    def send(self, verb: str, *args: object) -> None:
        line = (json.dumps([verb, *args]) + "\n").encode()
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write_end, line)  # one short write: atomic on a pipe
            except BrokenPipeError:
                self._closed = True
                log.warning("the guardian process %d is gone: children of this process are no longer "
                            "stopped if it is killed", self._process.pid)

    def close(self) -> None:
        """At a normal exit: close the pipe and let the guardian finish what was left registered."""
        with self._lock:
            if self._closed or os.getpid() != self.owner_pid:
                return
            self._closed = True
            os.close(self._write_end)
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            self._process.wait(timeout=60)


_client: _GuardianClient | None = None
_client_lock = threading.Lock()


def _guardian() -> _GuardianClient:
    global _client
    with _client_lock:
        if _client is None or _client.owner_pid != os.getpid():  # a forked child needs its own
            _client = _GuardianClient()
            atexit.register(_client.close)
        return _client


def _forget(verb: str, item: object) -> None:
    """Unregister ``item`` (nothing to do when this process never started a guardian)."""
    client = _client
    if client is not None and client.owner_pid == os.getpid():
        client.send(verb, item)


# --- the guardian process -------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count: nobody may reap them)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _stop_group(pgid: int, grace_s: float) -> None:
    _signal_group(pgid, signal.SIGTERM)
    if not _wait_gone(pgid, grace_s):
        _signal_group(pgid, signal.SIGKILL)
        _wait_gone(pgid, _KILL_WAIT_S)


def _guard(lines: Iterator[bytes]) -> None:
    """Track registrations until the pipe closes, then stop what is left, newest first."""
    groups: dict[int, float] = {}
    paths: dict[str, None] = {}
    for line in lines:
        try:
            verb, *args = json.loads(line)
        except ValueError:
            continue
        if verb == "+group":
            groups[int(args[0])] = float(args[1])
        elif verb == "-group":
            groups.pop(int(args[0]), None)
        elif verb == "+path":
            paths[str(args[0])] = None
        elif verb == "-path":
            paths.pop(str(args[0]), None)
    for pgid, grace_s in reversed(list(groups.items())):
        _stop_group(pgid, grace_s)
    for path in reversed(list(paths)):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    for _signum in (signal.SIGINT, signal.SIGHUP):  # only the closed pipe ends the guardian
        signal.signal(_signum, signal.SIG_IGN)
    _guard(iter(sys.stdin.buffer))
