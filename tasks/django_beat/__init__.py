"""JobQL's schedules in a Django project, kept in django-celery-beat's models so the project's
beat runs them and its admin shows them. A Django app (label ``jobql``): add
``django_celery_beat`` and ``tasks.django_beat`` to ``INSTALLED_APPS`` and set
``JOBQL_SCHEDULE_STORE=django``. Each schedule is a ``PeriodicTask`` plus a
:class:`~.models.Schedule` row for JobQL's own fields; :mod:`.scheduler` is the beat scheduler,
:mod:`gql.django.schedule_store` the API's store.
"""
