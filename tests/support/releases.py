"""Releases of JobQL side by side: the current tree, and the previous release in its own tree.

CHANGELOG.md names each release's commit (tags may not travel with a copy of the repository).
The previous release is a git worktree of that commit under ``var/releases/<commit>/`` with
its own environment, installed from its own lock by its own Makefile (``make sync``), once:
later sessions find both in place and ``make sync`` is a no-op. Its processes run from that
tree with that environment, and share the current release's Redis and ``JOBQL_*`` settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RELEASES = ROOT / "var" / "releases"

# "## [0.9.0] - 2026-12-07" then, in its section, "Commit `0ba3c1c`."
_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>.+)$", re.MULTILINE)
_COMMIT = re.compile(r"Commit `(?P<commit>[0-9a-f]{7,40})`")
# The Makefile's pinned uv: the same version here lets the previous release's sync use ours.
_UV_VERSION = re.compile(r"^UV_VERSION := (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    """A JobQL release as processes run it: its tree (the cwd, first on PYTHONPATH) and the
    Python of its environment."""

    version: str
    root: Path
    python: Path
    # How long making it ready took, and whether it was already there.
    prepared: dict[str, float] = field(default_factory=dict, compare=False)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` (a service environment of the tests) with this release's code first on
        PYTHONPATH instead of the current tree's; every ``JOBQL_*`` setting stays."""
        env = {k: v for k, v in base.items() if k != "VIRTUAL_ENV"}
        rest = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *rest])
        return env

    def api_command(self, port: int) -> list[str]:
        """`jobql api`, as production starts it (the same CLI in both releases)."""
        return [str(self.python), "-m", "gql.cli", "api", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1"]  # fmt: skip

    def worker_command(self, name: str, concurrency: int) -> list[str]:
        """`jobql worker` on the queues the settings configure, under its own name."""
        return [str(self.python), "-m", "gql.cli", "worker", "--concurrency", str(concurrency),
                "--hostname", f"{name}@%h"]  # fmt: skip


def current() -> Release:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    return Release(match.group(1) if match else "current", ROOT, Path(sys.executable))


def previous_release() -> tuple[str, str]:
    """The newest release CHANGELOG.md names as released, and its commit."""
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = list(_HEADING.finditer(text))
    for i, heading in enumerate(headings):
        if heading["date"].strip().lower() == "unreleased":
            continue
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        commit = _COMMIT.search(text, heading.end(), end)
        if commit is None:
            raise LookupError(f"CHANGELOG.md names no commit for {heading['version']}")
        return heading["version"], commit["commit"]
    raise LookupError("CHANGELOG.md names no released version")


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def unavailable(commit: str) -> str | None:
    """Why the previous release cannot be checked out here, or None."""
    try:
        _git("cat-file", "-e", f"{commit}^{{commit}}")
    except (RuntimeError, OSError) as exc:
        return f"commit {commit} of the previous release is not in this clone ({exc})"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time (pytest-xdist's workers may all want the release)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checked_out(tree: Path, full: str) -> bool:
    try:
        return (tree / ".git").exists() and _git("rev-parse", "HEAD", cwd=tree) == full
    except (RuntimeError, OSError):
        return False


def _make_env() -> dict[str, str]:
    """The environment for the release's own ``make``: nothing of the make or venv that
    may be running these tests (a parent make's flags and jobserver, an active venv)."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV",
            "UV_PROJECT_ENVIRONMENT", "PYTHONPATH"}  # fmt: skip
    return {k: v for k, v in os.environ.items() if k not in drop}


def prepare(version: str, commit: str) -> Release:
    """The release's tree and environment, made if missing: ``git worktree add --detach``,
    then its own ``make sync`` (its pinned uv; ours when the pins agree, which saves
    bootstrapping another). Cached under ``var/releases/<commit>/``."""
    full = _git("rev-parse", f"{commit}^{{commit}}")
    tree = RELEASES / full[:12]
    timings: dict[str, float] = {}
    with _locked(RELEASES / f"{full[:12]}.lock"):
        started = time.monotonic()
        timings["cached"] = float(_checked_out(tree, full))
        if not timings["cached"]:
            if tree.exists():  # a half-made tree of an interrupted run
                subprocess.run(["rm", "-rf", str(tree)], check=True)
            _git("worktree", "prune")
            _git("worktree", "add", "--detach", str(tree), full)
        timings["checkout"] = time.monotonic() - started

        started = time.monotonic()
        theirs = _UV_VERSION.search((tree / "Makefile").read_text())
        ours = _UV_VERSION.search((ROOT / "Makefile").read_text())
        our_uv = ROOT / ".tools" / "bin" / "uv"
        command = ["make", "--no-print-directory", "-C", str(tree), "sync", "PYTHON=python3"]
        if theirs and ours and theirs[1] == ours[1] and our_uv.exists():
            command.append(f"UV={our_uv}")
        done = subprocess.run(
            command, env=_make_env(), capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        timings["sync"] = time.monotonic() - started
    python = tree / ".venv" / "bin" / "python"
    assert python.exists(), f"no environment in {tree}"
    return Release(version, tree, python, timings)
