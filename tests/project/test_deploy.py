"""The deployment files, checked without a Docker engine: what they run exists and works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.valkey import EmbeddedValkey
from gql.app import create_app
from gql.cli import build_parser
from tasks.core.settings import Settings
from tests.conftest import ROOT, GraphQL


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions, one list per stage (comments and blank lines dropped,
    continued lines joined)."""
    stages: list[list[str]] = []
    text = re.sub(r"\\\n\s*", "", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _assert_runs_jobql_or_celery(command: list[str]) -> None:
    program, *args = command
    if program == "jobql":
        parsed, extra = build_parser().parse_known_args(args)
        assert parsed.command in ("api", "worker", "beat") or not extra, command
    else:
        assert program == "celery" and args[:2] == ["-A", "tasks.core.app"], command


def test_compose_runs_redis_api_worker_beat_and_flower_with_health_checks() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "api", "worker", "beat", "flower"}
    assert "--appendonly" in services["redis"]["command"], "Redis persistence is on"
    for name in ("api", "worker", "beat", "flower"):
        _assert_runs_jobql_or_celery(services[name]["command"])
        assert services[name]["healthcheck"]["test"], name
    # Flower can revoke and terminate tasks: this host only, and never without its login.
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    login = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert login.startswith("${FLOWER_BASIC_AUTH:?"), "compose refuses to start without it"
    assert services["api"]["command"][:2] == ["jobql", "api"]
    assert services["worker"]["command"][:2] == ["jobql", "worker"]
    assert services["beat"]["command"] == ["jobql", "beat"]


def test_compose_health_checks_point_at_real_endpoints() -> None:
    """The API's container check is liveness: /health/ready answers 503 while a queue has no
    worker, and an orchestrator would restart healthy APIs for it (readiness is for the load
    balancer). beat's is its own lock renewal."""
    services = _compose()["services"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8000(/[\w/]+)", api_check)
    assert path, api_check
    assert path.group(1) == "/health/live"
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", env="test"))
    assert path.group(1) in {getattr(r, "path", None) for r in app.routes}
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "jobql", "check", "--beat"]


def test_the_compose_stack_runs_in_production_from_env() -> None:
    """JOBQL_ENV=production refuses JOBQL_AUTH_MODE=none, so the stack's settings (.env, as
    .env.example has it) name the callers' keys; without .env it does not start at all."""
    shared = _compose()["services"]["api"]
    assert shared["environment"]["JOBQL_ENV"] == "production"
    assert shared["env_file"] == [{"path": ".env", "required": True}]
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["JOBQL_AUTH_MODE"] != "none"
    assert example["JOBQL_AUTH_MODE"] == "api_key" and "your_key_here" in example["JOBQL_API_KEYS"]


def test_the_image_installs_the_extras_its_build_argument_names(tmp_path: Path) -> None:
    """``EXTRAS`` (a build argument) picks the extras; by default the documented options'
    (PostgreSQL results, msgpack, zstd) and Flower's. The build stage's export, run here on
    the lock, holds their packages."""
    build, _ = _stages()
    arg = next(line for line in build if line.startswith("ARG EXTRAS="))
    extras = shlex.split(arg.removeprefix("ARG EXTRAS="))[0].split()
    assert extras == ["postgres", "msgpack", "zstd", "flower"]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras) <= set(declared["optional-dependencies"])
    run = next(line for line in build if line.startswith("RUN uv export "))
    export = run.removeprefix("RUN ").split(" && ")[0]
    assert "$EXTRAS" in export and "-o requirements.txt" in export
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("no pinned uv in .tools (make sync puts it there)")
    export = export.replace("uv ", f"{uv} ", 1).replace("requirements.txt", str(tmp_path / "r.txt"))
    exported = subprocess.run(
        ["sh", "-c", export],
        env={"PATH": "/usr/bin:/bin", "EXTRAS": " ".join(extras), "HOME": str(tmp_path)},
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    pinned = {line.split("==")[0] for line in (tmp_path / "r.txt").read_text().splitlines()}
    assert {"sqlalchemy", "psycopg", "msgpack", "backports-zstd", "flower"} <= pinned
    assert "pytest" not in pinned, "no development dependency in the image"


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_user() -> None:
    *builders, final = _stages()
    assert builders, "a build stage keeps compilers and caches out of the final image"
    assert final[0].startswith("FROM python:") and "slim" in final[0]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "apt-get install"):
        assert tool not in final_text, f"{tool} in the final image"
    cmd = next(line for line in final if line.startswith("CMD "))
    import json

    _assert_runs_jobql_or_celery(json.loads(cmd[4:]))


def test_jobql_is_an_installed_command_with_every_subcommand() -> None:
    jobql = ROOT / ".venv" / "bin" / "jobql"
    executable = str(jobql) if jobql.exists() else "jobql"
    out = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    for command in ("api", "worker", "beat", "dev", "export-schema", "check"):
        assert command in out.stdout
    sdl = subprocess.run(
        [sys.executable, "-m", "gql.cli", "export-schema"], capture_output=True, text=True,
        cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    assert sdl == (ROOT / "schema.graphql").read_text()


def test_check_names_each_problem(tmp_path: Any) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
           "JOBQL_REDIS_URL": "redis://user:hunter2@127.0.0.1:1/0"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "gql.cli", "check"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 1
    assert "FAIL  Redis for job records at redis://127.0.0.1:1/0" in result.stdout
    assert "FAIL  broker at" in result.stdout
    assert "hunter2" not in result.stdout, "no credentials in the messages"


def test_the_beat_check_fails_while_no_beat_renews_its_lock(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    """The compose check of beat (the other half, a live beat passing it, is the compose
    smoke's): a Redis where no beat holds RedBeat's lock fails it, naming the lock."""
    empty = valkey.url.rsplit("/", 1)[0] + "/11"  # a database no beat of the tests uses
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
           "JOBQL_REDIS_URL": empty}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "gql.cli", "check", "--beat"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "FAIL  beat holds the schedules' lock and renews it: LookupError: no beat renewed "
        "the lock in the last 10 s" in result.stdout
    )


@pytest.mark.slow
def test_the_worker_health_check_passes_for_the_live_worker(
    api: GraphQL, env: dict[str, str]
) -> None:
    name = api.data("{ workers { name } }")["workers"][0]["name"]
    test = _compose()["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # Compose names its worker celery@<container>; the session's worker has its own name.
    command = shlex.split(test[1].replace("celery@$$HOSTNAME", name))
    assert command[0] == "jobql"
    ok = subprocess.run([sys.executable, "-m", "gql.cli", *command[1:]], env=env, cwd=ROOT,
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    api_path = "/health/ready"
    assert api.http.get(api_path).status_code == 200


def test_nothing_is_served_that_a_deployment_did_not_ask_for(api: GraphQL) -> None:
    """No Swagger UI or ReDoc (pages loaded from a CDN) and no OpenAPI document by default;
    JOBQL_OPENAPI=true adds the document alone."""
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert api.http.get(path).status_code == 404, path
    asked = Settings(redis_url="redis://127.0.0.1:1/0", env="test", openapi=True)
    paths = {getattr(route, "path", None) for route in create_app(asked).routes}
    assert "/openapi.json" in paths
    assert not paths & {"/docs", "/redoc", "/docs/oauth2-redirect"}
