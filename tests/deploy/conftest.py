"""promtool for the deploy tests: a missing binary fails under CI and skips elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def run_promtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_promtool(*args, cwd=...)`` runs promtool and asserts that it succeeded."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found on PATH (Debian/Ubuntu: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    return run
