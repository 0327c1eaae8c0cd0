"""What `pip install jobql` puts on a machine is enough to run every `jobql` command.

The wheel is built as a user's install builds it, then read: every module of the project's
packages is in it, every project package any of them imports is in it (``jobql dev``
imports ``devtools``), GraphiQL's assets are in it, and the build says nothing of data
left out of the package configuration.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("gql", "tasks", "devtools")


def _uv() -> str:
    found = ROOT / ".tools" / "bin" / "uv"
    return str(found) if found.exists() else shutil.which("uv") or pytest.skip("no uv to build")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        # The source distribution first, then the wheel from it, as an install from the index
        # builds it: a stale build/ in the checkout cannot fill the gaps.
        [_uv(), "build", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (built,) = out.glob("jobql-*.whl")
    return zipfile.ZipFile(built), build.stdout + build.stderr


def _first_party() -> set[str]:
    """Top-level names that are this repository's own code (packages beside README.md)."""
    return {path.parent.name for path in ROOT.glob("*/__init__.py")}


def test_every_module_of_the_packages_is_in_the_wheel(wheel: tuple[zipfile.ZipFile, str]) -> None:
    names = set(wheel[0].namelist())
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = [path for path in tracked if path.endswith(".py") and path not in names]
    assert not missing, f"left out of the wheel: {missing}"
    assert "gql/http/static/graphiql.html" in names
    assert any(name.startswith("gql/http/static/graphiql/graphiql.min.js") for name in names)


def test_every_project_package_a_module_imports_is_installed(
    wheel: tuple[zipfile.ZipFile, str],
) -> None:
    archive, _ = wheel
    installed = {name.split("/")[0] for name in archive.namelist() if name.endswith(".py")}
    own = _first_party()
    wanted: dict[str, str] = {}
    for name in archive.namelist():
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(archive.read(name))):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in own:
                    wanted.setdefault(top, name)
    missing = {top: by for top, by in wanted.items() if top not in installed}
    assert not missing, f"imported but not installed (package: imported by): {missing}"
    assert set(PACKAGES) <= installed


def test_the_build_is_quiet_about_package_data(wheel: tuple[zipfile.ZipFile, str]) -> None:
    _, output = wheel
    assert "absent from the `packages` configuration" not in output, output[-2000:]


def test_the_installed_commands_run_from_any_directory(tmp_path: Path) -> None:
    """Not only from the checkout, where the current directory would hide a missing package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    jobql = Path(sys.prefix) / "bin" / "jobql"
    version = subprocess.run(
        [str(jobql), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"jobql {importlib.metadata.version('jobql')}"
    for module in ("devtools.run", "gql.app", "tasks.core.app"):
        imported = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert imported.returncode == 0, f"{module}: {imported.stderr[-2000:]}"


def test_the_image_runs_the_python_and_the_lock_that_ci_tests() -> None:
    """CI's main pass runs on the lowest CPython the project supports; the image ships it,
    installed from uv.lock by the same uv the Makefile pins."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    lowest = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert lowest, "pyproject.toml states the lowest supported Python"
    bases = re.findall(r"^FROM python:(\d+\.\d+)-slim", dockerfile, re.M)
    assert bases and set(bases) == {lowest.group(1)}, bases
    pinned = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert pinned and f"uv=={pinned.group(1)}" in dockerfile
    assert "--require-hashes" in dockerfile and "uv export --frozen" in dockerfile
