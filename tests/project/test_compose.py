"""docker-compose.yml, proven without a Docker engine (none runs on the developers' machines or
in CI): the file is checked against the published Compose Specification, and the stack starts as
plain processes, each service's own command, environment and ``env_file``, as a user would run it
after filling ``.env.example``'s placeholders, against a local Valkey in place of the ``redis``
service, and runs a job to SUCCESS through the API service's GraphQL."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.resources
import importlib.util
import io
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from dotenv import dotenv_values

from devtools.processes import free_port, stop_all, wait_for_port
from devtools.valkey import EmbeddedValkey
from tasks.core.messages import HIDDEN_INPUT
from tests.conftest import ROOT, GraphQL

COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent  # the environment's entry points: jobql, celery, python
FLOWER = importlib.util.find_spec("flower") is not None
NOT_FLOWER = "Flower is not installed here (the flower extra): the smoke runs the stack without it"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_spec() -> dict[str, Any]:
    """The Compose Specification's JSON schema, ``schema/compose-spec.json`` of
    github.com/compose-spec/compose-spec, as check-jsonschema vendors it (its catalog entry
    ``compose-spec``; which copy is the one of the check-jsonschema version in uv.lock), so
    the test needs no network."""
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendored.joinpath("compose-spec.json").read_text())
    return schema


def _errors(document: Any) -> list[str]:
    schema = _compose_spec()
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = _compose_spec()
    assert schema["title"] == "Compose Specification"
    assert _errors(_compose()) == []


def test_the_specification_check_catches_a_mistake() -> None:
    """The schema is strict where this file could go wrong: a misspelt key, a wrong type."""
    compose = _compose()
    compose["services"]["api"]["healthcheck"]["intervall"] = "10s"
    compose["services"]["worker"]["env_file"] = [{"paht": ".env"}]
    errors = _errors(compose)
    assert any("services/api/healthcheck" in e and "intervall" in e for e in errors), errors
    assert any("services/worker/env_file" in e for e in errors), errors


# Compose's interpolation: $$ is a literal $, ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?error}, ${NAME?error}, $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """The compose file as Compose reads it, its variables taken from ``variables``."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["name"] or match["bare"]
        got, op, arg = variables.get(name), match["op"], match["arg"]
        unset = got is None or (got == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise LookupError(f"compose refuses to start: {name}: {arg}")
        if op and op.endswith("-") and unset:
            return str(arg)
        return got or ""

    return _VARIABLE.sub(one, value)


def _image_environment() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's final stage: what every container starts with."""
    final = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    found: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            found |= dict(pair.split("=", 1) for pair in line[4:].split())
    return found


def filled_env_example() -> tuple[str, dict[str, str]]:
    """``.env.example`` with its placeholders replaced as a user would (test values, made
    now), and the API key the user would then call with."""
    api_key = secrets.token_urlsafe(32)
    values = {
        "sha256_of_apikey_prod_your_key_here": hashlib.sha256(api_key.encode()).hexdigest(),
        "flower_prod_your_key_here": secrets.token_urlsafe(16),
    }
    text = (ROOT / ".env.example").read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = [
        line for line in text.splitlines() if "your_key_here" in line and not line.startswith("#")
    ]
    assert not left, f"placeholders a user must fill and this smoke does not know: {left}"
    return text, {"api_key": api_key, "flower": values["flower_prod_your_key_here"]}


@dataclass
class Stack:
    """The compose services running as processes, each with its logs and the ports that
    stand for the ones it publishes."""

    home: Path
    ports: dict[int, int] = field(default_factory=dict)  # published -> this run's
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def log(self, service: str) -> str:
        return (self.home / f"{service}.log").read_text(errors="replace")

    def local(self, text: str) -> str:
        """A health check's text with the published ports made this run's."""
        for published, port in self.ports.items():
            text = text.replace(f"127.0.0.1:{published}", f"127.0.0.1:{port}")
        return text

    def command(self, command: list[str]) -> list[str]:
        """A service's command on this run's ports, listening on loopback only."""
        local = []
        for before, arg in zip(["", *command], command, strict=False):
            for published, port in self.ports.items():
                if arg == f"--port={published}" or (before == "--port" and arg == str(published)):
                    arg = arg.replace(str(published), str(port))
            local.append("127.0.0.1" if arg == "0.0.0.0" else arg)
        return local


@contextlib.contextmanager
def running_stack(tmp: Path, redis_url: str, env_file: str) -> Iterator[Stack]:
    compose = _compose()
    variables = {k: v for k, v in dotenv_values(stream=io.StringIO(env_file)).items() if v}
    services = interpolate(compose["services"], variables)
    stack = Stack(home=tmp)
    for service in services.values():
        for mapping in service.get("ports", []):
            stack.ports[int(mapping.rsplit(":", 1)[1])] = free_port()
    (tmp / ".env").write_text(env_file)  # where the env_file entries point, beside the file
    try:
        for name, service in services.items():
            if name == "redis" or (name == "flower" and not FLOWER):
                continue
            env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8"}
            env |= {"HOME": str(tmp / name), "HOSTNAME": socket.gethostname()}
            env |= _image_environment()
            for entry in service.get("env_file", []):
                path = entry["path"] if isinstance(entry, dict) else entry
                values = dotenv_values(tmp / path)
                env |= {k: v for k, v in values.items() if v is not None}
            for key, value in service.get("environment", {}).items():
                env[key] = str(value).replace("redis://redis:6379/0", redis_url)
            assert not [v for v in env.values() if "//redis:" in v], "the redis service's name"
            if name == "flower":
                env["FLOWER_ADDRESS"] = "127.0.0.1"  # Flower listens on every interface
            stack.envs[name] = env
            (tmp / name).mkdir()
            with (tmp / f"{name}.log").open("wb") as log:
                stack.processes[name] = subprocess.Popen(
                    stack.command(service["command"]),
                    env=env,
                    cwd=tmp / name,  # the image's home: no checkout, no .env there
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        yield stack
    except BaseException:
        for name in stack.processes:  # pytest shows what a failed test printed
            print(f"--- {name}'s log, its end ---\n{stack.log(name)[-3000:]}")  # noqa: T201
        raise
    finally:
        stop_all(list(stack.processes.values()), timeout=20)


def run_health_check(stack: Stack, service: str, within: float) -> subprocess.CompletedProcess[str]:
    """The service's compose health check, run as Docker runs it (CMD directly, CMD-SHELL
    through ``sh -c``) in the service's environment, until it passes or ``within`` ends."""
    test = interpolate(_compose()["services"][service]["healthcheck"]["test"], {})
    kind, *command = [stack.local(part) for part in test]
    argv = command if kind == "CMD" else ["sh", "-c", command[0]]
    deadline = time.monotonic() + within
    while True:
        done = subprocess.run(
            argv, env=stack.envs[service], cwd=stack.home / service,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(0.3)


ENQUEUE = """mutation($input: JSON!) {
  enqueue(task: "process_data", input: $input) { id state }
}"""


@pytest.mark.slow
def test_the_compose_stack_runs_a_job_to_success_as_plain_processes(tmp_path: Path) -> None:
    assert (BIN / "jobql").exists(), f"no jobql entry point beside {sys.executable}"
    env_file, secret = filled_env_example()
    valkey = EmbeddedValkey(tmp_path / "redis", persist=False).start()
    marker = f"input-{secrets.token_hex(8)}"  # job input that must show nowhere
    try:
        with running_stack(tmp_path, valkey.url, env_file) as stack:
            wait_for_port(stack.ports[8000], 30, stack.processes["api"])
            api = GraphQL(f"http://127.0.0.1:{stack.ports[8000]}")
            # Production: the API refuses a caller without a key.
            anonymous = api.http.post("/graphql", json={"query": ENQUEUE})
            assert anonymous.status_code == 401, anonymous.text
            api.http.headers["Authorization"] = f"ApiKey {secret['api_key']}"
            if FLOWER:  # watching before the job runs: Flower keeps the events it sees
                wait_for_port(stack.ports[5555], 30, stack.processes["flower"])

            job = api.data(ENQUEUE, {"input": {"data": marker, "delay": 0}})["enqueue"]
            done = api.wait_done(job["id"], timeout=30)
            assert done["state"] == "SUCCESS", done
            assert done["result"] == {"processed": marker, "status": "complete"}

            services = [name for name in ("api", "worker", "beat", "flower") if name in stack.envs]
            with ThreadPoolExecutor(len(services)) as pool:
                checks = dict(zip(services, pool.map(
                    lambda name: run_health_check(stack, name, within=15), services
                ), strict=True))  # fmt: skip
            failed = {n: c.stdout + c.stderr for n, c in checks.items() if c.returncode}
            assert not failed, failed
            assert "beat holds the schedules' lock" in checks["beat"].stdout

            if FLOWER:
                _flower_asks_for_its_login_and_shows_no_input(stack, secret["flower"], api, done)
            api.http.close()
        for name in stack.processes:
            assert marker not in stack.log(name), f"the job's input is in {name}'s log"
    finally:
        valkey.stop()


def _flower_asks_for_its_login_and_shows_no_input(
    stack: Stack, password: str, api: GraphQL, job: dict[str, Any]
) -> None:
    """Flower answers only with its login, and what it shows of a job (from the worker's
    task-received event) is no input. Its event receiver connects beside its web server: if it
    missed the first job's task-received event, a second job shows it."""
    base = f"http://127.0.0.1:{stack.ports[5555]}"
    login = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    with httpx.Client(base_url=base, timeout=10) as flower:
        for path in ("/", "/api/tasks", "/api/workers"):
            assert flower.get(path).status_code == 401, path
        for attempt in range(2):
            deadline = time.monotonic() + 10
            while True:
                tasks = flower.get("/api/tasks", headers={"Authorization": login})
                assert tasks.status_code == 200, tasks.text
                task = tasks.json().get(job["id"]) or {}
                if task.get("state") == "SUCCESS" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if task.get("kwargs") is not None or attempt:
                break
            again = {"data": job["result"]["processed"], "delay": 0}
            job = api.data(ENQUEUE, {"input": again})["enqueue"]
            assert api.wait_done(job["id"])["state"] == "SUCCESS"
    assert task.get("state") == "SUCCESS", f"Flower saw no end of {job['id']}: {task}"
    assert task["kwargs"] == HIDDEN_INPUT and task["args"] == "()", task


def test_the_smoke_starts_flower_too() -> None:
    if not FLOWER:
        pytest.skip(NOT_FLOWER)
    assert shutil.which("celery", path=str(BIN)), "Flower runs as `celery flower`"
