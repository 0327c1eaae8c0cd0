"""The Node.js side of the frontend tests: the e2e packages, installed from their lock file."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

E2E = ROOT / "tests" / "e2e"
_STAMP = E2E / "node_modules" / ".installed-from-lock"


def node_packages() -> Path:
    """``tests/e2e`` with its ``node_modules`` matching ``package-lock.json`` (``npm ci`` once,
    again only when the lock file changes); skips the test where Node.js is absent."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) is not installed: the Apollo Client suite needs it")
    lock = (E2E / "package-lock.json").read_bytes()
    # pytest-xdist runs the Node.js tests in several processes at once: one installs while
    # the others wait (two `npm ci` at once clobber each other's node_modules).
    with (E2E / ".npm-install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not _STAMP.exists() or _STAMP.read_bytes() != lock:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=E2E,
                check=True,
                timeout=600,
            )
            _STAMP.write_bytes(lock)
    return E2E


def node(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> str:
    """Run a script of ``tests/e2e`` and return its standard output; fail with its errors."""
    run = subprocess.run(
        ["node", script, *args],
        cwd=node_packages(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, f"{script} failed:\n{run.stderr}\n{run.stdout}"
    return run.stdout
