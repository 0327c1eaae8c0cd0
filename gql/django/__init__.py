"""JobQL inside a Django project, so its users, transactions and beat are JobQL's too:
:func:`application` serves JobQL's paths beside the project's ASGI app, callers signed in by
their Django session; :func:`enqueue_on_commit` starts a job when the transaction commits;
``JOBQL_SCHEDULE_STORE=django`` keeps schedules in django-celery-beat
(:mod:`gql.django.schedule_store`, :mod:`tasks.django_beat`). Django is imported only there and,
for the ``django-db`` result backend, in :mod:`tasks.core.app`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib import auth
from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections, transaction
from django.http import HttpRequest
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.types.field import StrawberryField

from gql.app import create_app
from gql.http import dashboard, graphiql
from gql.services.auth import Principal
from gql.services.blocking import BlockingJobs
from gql.services.plans import EnqueueRequest
from gql.services.schedule_store import ScheduleStore
from tasks.core import tracing
from tasks.core.app import celery_app, registry
from tasks.core.registry import TaskSpec
from tasks.core.settings import Settings, get_settings

# What JobQL answers; every other path goes to the project's application.
JOBQL_PATHS = ("/graphql", graphiql.ASSETS_PATH, dashboard.PATH, "/health/", "/metrics")

OwnerOf = Callable[[Any], str]


def username(user: Any) -> str:
    """The default owner of a Django user's jobs: the username (``USERNAME_FIELD``)."""
    return str(user.get_username())


def application(
    project: ASGIApp | None = None,
    *,
    settings: Settings | None = None,
    mutations: Sequence[StrawberryField] = (),
    owner_of: OwnerOf = username,
) -> ASGIApp:
    """JobQL at ``/graphql`` and ``project`` (default: Django's ASGI application) elsewhere.

    Call it in the project's ``asgi.py`` once ``DJANGO_SETTINGS_MODULE`` is set. Tasks are
    found as the Celery worker finds them: ``JOBQL_TASK_MODULES`` and the modules the
    project's Celery app autodiscovers from ``INSTALLED_APPS``. ``mutations`` join the
    schema (the project's own, which may write models and start jobs in one transaction).
    """
    project = project or get_asgi_application()  # django.setup() happens here
    load_tasks()
    settings = settings or get_settings()
    if "external" not in settings.auth_methods:
        # Mounted in Django, callers are Django's users; tokens may come on top.
        methods = settings.auth_methods | {"external"}
        settings = settings.model_copy(update={"auth_mode": ",".join(sorted(methods))})
    if not settings.csrf_prevention:
        raise ImproperlyConfigured(
            "JOBQL_CSRF_PREVENTION=false with session sign-in would let other sites act as "
            "your signed-in users"
        )
    api = create_app(
        settings,
        sign_in=SessionSignIn(owner_of, settings),
        mutations=mutations,
        schedule_store=schedule_store(settings),
    )
    return Router(api, project)


def schedule_store(settings: Settings) -> ScheduleStore | None:
    """django-celery-beat's models with ``JOBQL_SCHEDULE_STORE=django`` (the app
    ``tasks.django_beat`` installed), else None: RedBeat's entries in Redis."""
    if settings.schedule_store != "django":
        return None
    if not apps.is_installed("tasks.django_beat"):
        raise ImproperlyConfigured(
            "JOBQL_SCHEDULE_STORE=django keeps schedules in django-celery-beat's models: add "
            "'django_celery_beat' and 'tasks.django_beat' to INSTALLED_APPS"
        )
    from gql.django.schedule_store import DjangoScheduleStore  # imports the models

    return DjangoScheduleStore(settings.default_queue)


def load_tasks() -> None:
    """Import every task module the worker imports: the ``imports`` setting, then what the
    project's Celery app autodiscovers (``app.autodiscover_tasks()`` runs on this signal)."""
    celery_app.loader.import_default_modules()


class Router:
    """``/graphql`` and its neighbours to JobQL (and the lifespan), the rest to the project."""

    def __init__(self, jobql: ASGIApp, project: ASGIApp) -> None:
        self.jobql = jobql
        self.project = project

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or _jobql_path(scope["path"]):
            await self.jobql(scope, receive, send)
        elif scope["type"] == "websocket" and isinstance(self.project, ASGIHandler):
            # Plain Django speaks no WebSocket (Channels does): refuse the upgrade.
            await receive()
            await send({"type": "websocket.close", "code": 1000})
        else:
            await self.project(scope, receive, send)


def _jobql_path(path: str) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in JOBQL_PATHS)


class SessionSignIn:
    """The Django user of a request's or WebSocket's session cookie, as JobQL's caller.

    The session and the user are read as Django's own middleware reads them (the session
    engine, ``auth.get_user``, which checks the password hash the session was made with),
    in Django's thread for sync code, never on the event loop. A WebSocket from a page of
    another origin is not signed in by the cookie the browser attaches to it.
    """

    def __init__(self, owner_of: OwnerOf, settings: Settings) -> None:
        self._owner_of = owner_of
        self._origins = frozenset(settings.cors_origins)
        self._engine = import_module(django_settings.SESSION_ENGINE)
        self._cookie = django_settings.SESSION_COOKIE_NAME

    async def __call__(self, scope: Mapping[str, Any]) -> Principal | None:
        headers = dict(scope.get("headers") or ())
        cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        morsel = cookies.get(self._cookie)
        if morsel is None or not morsel.value:
            return None
        if scope["type"] == "websocket" and not self._same_site(headers):
            return None
        lookup: Callable[[str], Principal | None] = self._lookup
        return await sync_to_async(lookup)(morsel.value)

    def _same_site(self, headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:
            return True  # not a browser: it sent the cookie on purpose
        host = headers.get(b"host", b"").decode("latin-1")
        return urlsplit(origin).netloc == host or origin in self._origins

    def _lookup(self, session_key: str) -> Principal | None:
        close_old_connections()  # what Django does at each request's start
        request = HttpRequest()
        request.session = self._engine.SessionStore(session_key)
        user = auth.get_user(request)
        if not user.is_authenticated or not user.is_active:
            return None
        return Principal(self._owner_of(user), admin=bool(user.is_superuser))


_jobs_lock = threading.Lock()
_jobs: BlockingJobs | None = None


def blocking_jobs() -> BlockingJobs:
    """This process's synchronous enqueuer (Django code runs outside the event loop)."""
    global _jobs
    with _jobs_lock:
        if _jobs is None:
            load_tasks()
            _jobs = BlockingJobs(get_settings(), registry)
        return _jobs


def enqueue_on_commit(
    task: TaskSpec | str,
    data: Any,
    *,
    owner: str,
    options: EnqueueRequest | None = None,
    using: str | None = None,
) -> str:
    """Start a job when the current transaction commits; return its id at once.

    The input is checked now (``BadUserInput`` inside the transaction, so it can roll
    back). On commit the record and the Celery message are written together; on rollback
    nothing is: no record, no message, no event, so ``job(id)`` stays null and no
    subscription hears of it. Outside a transaction the job starts at once.
    """
    jobs = blocking_jobs()
    job_id = jobs.prepare(task, data, owner, options).fields["id"]

    def start() -> None:
        with tracing.publishing(task if isinstance(task, str) else task.name) as span:
            jobs.write(jobs.prepare(task, data, owner, options, job_id))
            tracing.published(span, job_id)

    transaction.on_commit(start, using=using)
    return job_id
