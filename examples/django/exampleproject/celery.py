"""The project's Celery app is JobQL's: tasks autodiscovered from INSTALLED_APPS join it.

Start a worker with ``celery -A exampleproject worker``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
# This project keeps Celery's results in django-celery-results (its TaskResult table) and
# has only the tasks of its own apps; these are JobQL settings, overridable from outside.
os.environ.setdefault("JOBQL_RESULT_BACKEND_URL", "django-db")
os.environ.setdefault("JOBQL_TASK_MODULES", "[]")
# Schedules live in django-celery-beat's tables, where this project's beat reads them.
os.environ.setdefault("JOBQL_SCHEDULE_STORE", "django")

from tasks import celery_app as app

# Imports <app>.tasks of every INSTALLED_APPS entry, in the worker and in the API alike.
app.autodiscover_tasks()
