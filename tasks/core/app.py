"""The Celery apps: :data:`celery_app`, where ``@job()`` declares tasks and which a worker runs
(its worker-only parts attached on ``celeryd_init`` by :mod:`tasks.worker.app`, so the API never
loads them), and the API's producer-side twins, which never subscribe to a result channel: with a
Redis backend every ``apply_async`` in a long-lived process subscribes to one nothing reads,
until the producer blocks for good (Celery issues #3808 and #6963). So jobs go out with no result
backend, and workflows' chords with a send-only one (:mod:`tasks.core.canvas`).
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, celeryd_init
from kombu.entity import Exchange, Queue

# logs and rabbitmq for their receivers: the logging of worker and beat, a queue check.
from tasks.core import logs, rabbitmq, redis_clients, result_backends  # noqa: F401
from tasks.core.base import JobTask
from tasks.core.messages import PRIORITY_SEP, PRIORITY_STEPS, stamp
from tasks.core.registry import TaskRegistry
from tasks.core.schedules import BEAT_PREFIX
from tasks.core.settings import Settings, get_settings


def _queue(settings: Settings, name: str) -> Queue:
    """A queue as Celery creates one on first use (a direct exchange of its name); on
    RabbitMQ with the arguments of ``tasks.core.rabbitmq``."""
    if rabbitmq.is_amqp(settings.broker):
        return rabbitmq.queue(settings, name)
    return Queue(name, Exchange(name, "direct"), routing_key=name)  # type: ignore[no-untyped-call]


def _sender_backend(settings: Settings) -> str | None:
    """A sender's result backend: only a chord needs one, and it must not subscribe.

    Redis's would (see ``ProducerRedisBackend``); a database's (SQLAlchemy's, or
    ``django-db``) never does.
    """
    url = settings.result_backend
    if result_backends.is_redis(url):
        return f"tasks.core.canvas:ProducerRedisBackend+{url}"
    if redis_clients.is_sentinel(url):
        return f"tasks.core.canvas:ProducerSentinelBackend+{url}"
    if url.startswith("django-"):
        return url
    if result_backends.is_database(url):
        return result_backends.database_backend(settings)  # nothing to subscribe to
    return None


def _redis_shapes(settings: Settings) -> dict[str, Any]:
    """TLS and Sentinel options for Celery's Redis broker and result backend, from the same
    settings every other Redis client of JobQL is made from (``tasks.core.redis_clients``)."""
    broker = redis_clients.celery_redis_options(settings.broker, settings)
    backend = redis_clients.celery_redis_options(settings.result_backend, settings)
    config: dict[str, Any] = {}
    if "ssl" in broker:
        config["broker_use_ssl"] = broker["ssl"]
    if "ssl" in backend:
        config["redis_backend_use_ssl"] = backend["ssl"]
    if "transport" in backend:
        config["result_backend_transport_options"] = backend["transport"]
    return config


def ready_result_backend(settings: Settings) -> None:
    """Load Django's apps where django-celery-results keeps results (``django-db``): the
    worker's Django fixup does it there, a sender of chords (the API) does it here. It
    imports the project's apps and opens no connection; under ``gql.django`` it is done."""
    if settings.result_backend.startswith("django-"):
        import django

        django.setup()


def celery_config(
    settings: Settings, *, producer: bool = False, canvas: bool = False
) -> dict[str, Any]:
    """Celery configuration derived from the settings, for real use.

    ``canvas``: a producer that sends workflows, whose chords need the result backend.
    """
    if producer:
        backend = _sender_backend(settings) if canvas else None
    else:
        backend = result_backends.worker_backend(settings)
    transport_options = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "priority_steps": PRIORITY_STEPS,
        "sep": PRIORITY_SEP,
        "queue_order_strategy": "priority",
        # A message unacknowledged this long is redelivered (README "Guarantees").
        "visibility_timeout": settings.redelivery_after,
        # Sentinel: the master's name and how to talk to the sentinels.
        **redis_clients.celery_redis_options(settings.broker, settings).get("transport", {}),
    }
    accepted = list(dict.fromkeys(["json", settings.serializer]))
    config: dict[str, Any] = {
        "broker_url": settings.broker,
        "result_backend": backend,
        # The webhook task is JobQL's own: every worker can deliver. fail_fast stops the
        # rest of a FAIL_FAST workflow wherever a step's failure is recorded.
        "imports": ()
        if producer
        else (*settings.task_modules, "tasks.worker.webhooks", "tasks.worker.fail_fast"),
        "task_serializer": settings.serializer,
        "result_serializer": settings.serializer,
        # JSON always: the API writes JSON task messages itself (tasks.core.messages).
        "accept_content": accepted,
        "result_accept_content": accepted,
        "event_serializer": "json",
        "timezone": "UTC",
        "enable_utc": True,
        # JobQL's records hold every state and result; Celery's backend gets the copy
        # Settings.celery_results asks for. A chord over Redis completes either way (Celery
        # counts its parts whether or not their results are stored).
        "task_ignore_result": settings.celery_results == "none",
        "task_track_started": settings.celery_results == "all",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.job_retention_seconds,
        "result_extended": True,
        "task_default_queue": settings.default_queue,
        # A worker started without ``--queues`` consumes every one of these.
        "task_queues": tuple(_queue(settings, name) for name in settings.queues),
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": settings.task_events,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.connect_timeout,
        "broker_transport_options": transport_options,
        "redis_socket_connect_timeout": settings.connect_timeout,
        "redis_socket_timeout": settings.socket_timeout,
        # A broker that is down must be reported at once, not after Celery's patient default.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        **_redis_shapes(settings),
    }
    config |= beat_config(settings)
    config |= result_backends.backend_options(settings)
    if rabbitmq.is_amqp(settings.broker):
        # Only the RabbitMQ options: the Redis transport's make no sense there.
        config |= rabbitmq.celery_options(settings)
    if not producer:
        # The tracer stores each outcome in the result backend before JobQL's hooks run; a
        # Redis restart there failed the job. Retried (jittered backoff up to 1 s) for about
        # the outage tolerance; progress reports opt out (tasks.core.base).
        config |= {
            "result_backend_always_retry": True,
            "result_backend_base_sleep_between_retries_ms": 100,
            "result_backend_max_sleep_between_retries_ms": 1000,
            "result_backend_max_retries": int(settings.redis_outage_tolerance * 2) + 5,
        }
    return config


BEAT_SCHEDULERS = {
    "redis": "tasks.worker.beat:JobQLScheduler",
    "django": "tasks.django_beat.scheduler:JobQLDatabaseScheduler",
}


def beat_config(settings: Settings) -> dict[str, Any]:
    """Celery beat on RedBeat (tasks.worker.beat): schedules read from the records' Redis under
    JobQL's keys (tasks.core.schedules), at least every ``JOBQL_BEAT_INTERVAL`` seconds; over TLS
    and through Sentinel as the records are (RedBeat builds its own client from these).
    With ``JOBQL_SCHEDULE_STORE=django``, django-celery-beat's models (tasks.django_beat)."""
    url = settings.redis
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        # RedBeat's own: a Redis blip is retried this long before beat gives up.
        "retry_period": settings.redis_outage_tolerance,
    }
    shape = redis_clients.celery_redis_options(url, settings)
    if redis_clients.is_sentinel(url):
        hosts, master = redis_clients.sentinel_hosts(url)
        # RedBeat's Sentinel form: the URL only names the scheme; the rest are options.
        url = "redis-sentinel://"
        options |= {
            "sentinels": hosts,
            "service_name": settings.redis_sentinel_master,
            "sentinel_kwargs": shape["transport"]["sentinel_kwargs"],
            **master,
        }
    config = {
        "beat_scheduler": BEAT_SCHEDULERS[settings.schedule_store],
        "beat_max_loop_interval": settings.beat_interval,
        "redbeat_redis_url": url,
        "redbeat_key_prefix": BEAT_PREFIX,
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        "redbeat_redis_options": options,
    }
    if "ssl" in shape:
        config["redbeat_redis_use_ssl"] = shape["ssl"]
    return config


def create_celery_app(
    settings: Settings | None = None, *, producer: bool = False, canvas: bool = False
) -> Celery:
    """Build an app whose configuration is read when first used, not at import."""
    app = Celery(
        "jobql-producer" if producer else "jobql",
        task_cls=JobTask,
        set_as_current=not producer,
    )
    app.add_defaults(
        lambda: celery_config(settings or get_settings(), producer=producer, canvas=canvas)
    )
    if not producer:
        _DECLARED[app] = settings
    return app


# The apps tasks are declared on, and the settings each was made with: a worker started on one
# of them gets the worker's parts. Weak: an app nobody holds any more is forgotten.
_DECLARED: weakref.WeakKeyDictionary[Celery, Settings | None] = weakref.WeakKeyDictionary()


def _starting_worker(instance: Any = None, **_: Any) -> None:
    app = getattr(instance, "app", None)
    if app in _DECLARED:
        from tasks.worker.app import attach  # the worker's parts, in a worker only

        attach(app, _DECLARED[app] or get_settings())


celeryd_init.connect(_starting_worker)


def _hide_input(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every message Celery's producer sends from a process that loaded JobQL (the API's
    other brokers, beat's, workflows', retries, webhooks) carries no job input in its
    ``argsrepr``/``kwargsrepr``, and carries the format header, as the API's own message does
    (``tasks.core.messages``)."""
    if headers is not None:
        stamp(headers)


before_task_publish.connect(_hide_input)


# The app every task is declared on, and the worker's entry point (``jobql worker`` runs
# ``celery -A tasks.core.app worker``; a Django project's own app is this one).
celery_app = create_celery_app()

# Declares typed tasks on the worker's app: ``@job()`` above a function.
registry = TaskRegistry(celery_app)
job = registry.job
