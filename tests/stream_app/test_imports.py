"""Importing the project builds nothing: no STREAM_APP_* variable is read and no socket is opened.

Every module of ``stream_app``, ``models``, ``schemas`` and ``simulation`` is imported in a fresh
interpreter whose ``os.environ`` records each STREAM_APP_* key it is asked for (by name or by
iterating) and whose sockets refuse to connect, bind or resolve a name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stream_app", "models", "schemas", "simulation")

PROBE = r"""
import importlib, json, os, pkgutil, socket, sys, traceback
from collections.abc import MutableMapping

found = {"env": [], "sockets": [], "modules": [], "errors": []}
ROOT = os.getcwd() + "/"


def caller():
    # The frame that touched the environment (skipping this probe and the mapping machinery).
    for frame in reversed(traceback.extract_stack()[:-1]):
        if frame.filename != "<string>" and "_collections_abc" not in frame.filename:
            return frame
    return None


def in_project(frame):
    return frame is not None and frame.filename.startswith(ROOT) and "/.venv" not in frame.filename


# Records every STREAM_APP_* key the project's own code touches, by name or by iterating (a
# library copying the whole environment, e.g. for a subprocess, reads no setting).
class RecordingEnviron(MutableMapping):

    def __init__(self, real):
        self.real = real

    def _note(self, key):
        frame = caller()
        if str(key).startswith("STREAM_APP_") and in_project(frame):
            found["env"].append(f"{key} read at {frame.filename}:{frame.lineno}")

    def __getitem__(self, key):
        self._note(key)
        return self.real[key]

    def __setitem__(self, key, value):
        self.real[key] = value

    def __delitem__(self, key):
        del self.real[key]

    def __iter__(self):
        for key in list(self.real):
            self._note(key)
            yield key

    def items(self):
        return [(key, self.real[key]) for key in self]

    def __len__(self):
        return len(self.real)

    def copy(self):
        return dict(self.items())

    def __contains__(self, key):
        self._note(key)
        return key in self.real


def refuse(name):
    def refused(*args, **kwargs):
        frame = caller()
        found["sockets"].append(f"socket {name}{args[1:] if name != 'getaddrinfo' else args[:2]} at "
                                f"{frame.filename}:{frame.lineno}" if frame else name)
        raise OSError(f"{name} refused while importing")
    return refused


os.environ = RecordingEnviron(os.environ)
for name in ("connect", "connect_ex", "bind"):
    setattr(socket.socket, name, refuse(name))
socket.getaddrinfo = refuse("getaddrinfo")

for package in sys.argv[1:]:
    root = importlib.import_module(package)
    found["modules"].append(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=package + ".", onerror=found["errors"].append):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # an entry point: run by ``python -m``, never imported
        try:
            importlib.import_module(info.name)
            found["modules"].append(info.name)
        except Exception as exc:
            found["errors"].append(f"{info.name}: {type(exc).__name__}: {exc}")
print(json.dumps(found))
"""


def _probe(packages: tuple[str, ...], cwd: Path) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}
    env["STREAM_APP_PROBE"] = "1"  # a STREAM_APP_* variable to see: found if the project walks the environment
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(ROOT)])
    result = subprocess.run([sys.executable, "-c", PROBE, *packages], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_module_reads_no_setting_and_opens_no_socket() -> None:
    found = _probe(PACKAGES, ROOT)
    assert not found["errors"], found["errors"]
    assert {"stream_app.app", "stream_app.worker", "stream_app.agents.behavior", "stream_app.pipelines.behavior",
            "stream_app.cli.worker", "models.next_action.serving", "schemas.events", "simulation.users"} \
        <= set(found["modules"]), "the walk reached the project's modules"
    assert not found["env"], "STREAM_APP_* read at import:\n" + "\n".join(found["env"])
    assert not found["sockets"], "sockets used at import:\n" + "\n".join(found["sockets"])


def test_the_probe_catches_a_module_that_reads_a_setting_and_connects(tmp_path: Path) -> None:
    package = tmp_path / "leaky"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reads.py").write_text("import os\nBROKER = os.environ.get('STREAM_APP_BROKER')\n"
                                      "PROBED = {k for k in os.environ if k.endswith('PROBE')}\n")
    (package / "connects.py").write_text("import socket\ntry:\n    socket.socket().connect(('127.0.0.1', 9))\n"
                                         "except OSError:\n    pass\n")
    found = _probe(("leaky",), tmp_path)
    assert {"leaky.reads", "leaky.connects"} <= set(found["modules"])
    assert [line.split(" read at ")[0] for line in found["env"]] == ["STREAM_APP_BROKER", "STREAM_APP_PROBE"]
    assert len(found["sockets"]) == 1 and "connect" in found["sockets"][0]
