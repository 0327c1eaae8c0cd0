"""The layers import one way: no cycle, nothing imports a layer above it, and the API never
loads the worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.import_graph import ROOT, cycle, graph

# Top to bottom: a module may import its own layer and the ones below it, never above.
GQL_LAYERS = [
    ("gql.app", "gql.cli", "gql.export", "gql.django"),  # assembly and commands
    ("gql.http",),
    ("gql.schema",),
    ("gql.services",),
    ("gql.ops",),
    ("gql.live",),
    ("gql.compat",),
]


def _layer(module: str) -> int | None:
    for depth, layer in enumerate(GQL_LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return depth
    return None


@pytest.mark.parametrize("package", ["tasks", "gql"])
def test_no_module_imports_itself_through_others(package: str) -> None:
    assert cycle(graph(package)) is None


def test_the_check_sees_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_every_api_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    upwards = []
    for module, targets in graph("gql").items():
        if module == "gql":
            continue
        depth = _layer(module)
        assert depth is not None, f"{module} is in no layer of GQL_LAYERS"
        for target in targets:
            below = _layer(target)
            if below is not None and below < depth:
                upwards.append(f"{module} -> {target}")
    assert not upwards


def test_the_api_and_the_kernel_never_import_the_worker() -> None:
    """``tasks.worker`` is what runs inside a worker. The API imports ``tasks.core`` (and the
    Django app's models); the kernel reaches the worker only from the hook a starting worker
    calls (``tasks.core.app``, on ``celeryd_init``)."""
    edges = graph("gql", "tasks")
    reaching = [
        f"{module} -> {target}"
        for module, targets in edges.items()
        if module.startswith(("gql", "tasks.core"))
        for target in targets
        if target.startswith("tasks.worker")
    ]
    assert reaching == ["tasks.core.app -> tasks.worker.app"]


# What the libraries import of OpenTelemetry on their own: FastAPI its API (for its native
# telemetry), redis-py its SDK's metrics when installed (redis.observability); the rest of
# OpenTelemetry is JobQL's to load, with JOBQL_OPENTELEMETRY=true only.
_OWN_OTEL = """
import sys
import fastapi, redis
before = {m for m in sys.modules if m.startswith("opentelemetry")}
def loaded_since():
    return sorted(m for m in sys.modules if m.startswith("opentelemetry") and m not in before)
"""


def test_an_api_process_loads_no_worker_module_nor_tracing_when_off() -> None:
    """The proof at run time: the whole API built, with every task declared, and not one
    module of ``tasks.worker`` in the process. Then, with ``JOBQL_OPENTELEMETRY`` off and the
    ``otel`` extra installed, neither the API nor a worker's parts loaded anything of
    OpenTelemetry beyond what their libraries import themselves."""
    script = _OWN_OTEL + (
        "from gql.app import create_app; create_app(); "
        "print(sorted(m for m in sys.modules if m.startswith('tasks.worker'))); "
        "import tasks.worker.app; print(loaded_since(), 'tasks.core.tracing_sdk' in sys.modules)"
    )
    done = _python(script, JOBQL_OPENTELEMETRY="false")
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "[] False"], done.stderr[-2000:]


def test_the_api_builds_without_the_optional_extras() -> None:
    """A plain ``pip install jobql`` has no SQLAlchemy (the ``postgres`` extra brings it) and
    no OpenTelemetry SDK (the ``otel`` extra): the API and the declared Celery app import and
    build without them, ``JOBQL_OPENTELEMETRY=true`` included, which warns once and loads
    nothing of OpenTelemetry beyond what the libraries import themselves."""
    absent = (
        "sqlalchemy", "opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation"
    )  # fmt: skip
    script = (
        f"import sys; sys.modules.update(dict.fromkeys({absent!r}))\n"  # as if not installed
        + _OWN_OTEL
        + "import tasks.core.app; from gql.app import create_app; create_app(); "
        "print('built', loaded_since())"
    )
    done = _python(script, JOBQL_OPENTELEMETRY="true")
    assert done.stdout.strip().splitlines()[-1] == "built []", done.stderr[-2000:]
    assert done.stderr.count("OpenTelemetry's SDK is not installed") == 1, done.stderr[-2000:]


def _python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter of the test environment, from the repository."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env} if env else None,
    )
