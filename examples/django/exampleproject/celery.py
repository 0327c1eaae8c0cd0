"""The project's Celery app is JobQL's: tasks autodiscovered from INSTALLED_APPS join it.

Start a worker with ``celery -A exampleproject worker``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
# This project keeps Celery's results in django-celery-results (its TaskResult table) and
# has only the tasks of its own apps; both are JobQL settings, overridable from outside.
os.environ.setdefault("JOBQL_RESULT_BACKEND_URL", "django-db")
os.environ.setdefault("JOBQL_TASK_MODULES", "[]")

from tasks.app import celery_app as app

# Imports <app>.tasks of every INSTALLED_APPS entry, in the worker and in the API alike.
app.autodiscover_tasks()
