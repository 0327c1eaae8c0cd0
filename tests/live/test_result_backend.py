"""Celery's own result backend holds the outcome JobQL shows, whichever backend it is.

JobQL reads its job records, never Celery's results; Celery's ``AsyncResult`` (Flower,
existing code) reads the backend. Both must tell the same story. `make test` runs this with
the Redis backend and again with django-celery-results (``JOBQL_RESULT_BACKEND_URL=django-db``).
"""

from __future__ import annotations

import os

import pytest

from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import GraphQL

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.django_results]

PROCESS = "mutation { processData(input: { data: { n: 1 }, delay: 0 }) { id } }"
FAIL = (
    'mutation { sendEmail(input: { to: "eve@nowhere.invalid", subject: "s", body: "b" }) { id } }'
)


def test_celery_reads_the_outcome_jobql_shows(api: GraphQL, settings: Settings) -> None:
    if settings.result_backend == "django-db":
        import django

        django.setup()  # the workers' Django settings (DJANGO_SETTINGS_MODULE)
    done = api.wait_done(api.data(PROCESS)["processData"]["id"])
    failed = api.wait_done(api.data(FAIL)["sendEmail"]["id"])
    celery = create_celery_app(settings)
    try:
        result = celery.AsyncResult(done["id"])
        assert (result.state, result.result) == ("SUCCESS", done["result"])
        assert celery.AsyncResult(failed["id"]).state == "FAILURE" == failed["state"]
        backend = type(celery.backend).__module__
    finally:
        celery.close()
    if os.environ.get("JOBQL_RESULT_BACKEND_URL") == "django-db":
        assert backend.startswith("django_celery_results"), backend
