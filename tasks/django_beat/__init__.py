"""JobQL's schedules in a Django project, kept in django-celery-beat's models.

A Django app (label ``jobql``): add ``django_celery_beat`` and ``tasks.django_beat`` to
``INSTALLED_APPS`` and set ``JOBQL_SCHEDULE_STORE=django``. Each JobQL schedule is a
``PeriodicTask`` (its task, kwargs, queue, priority, enabled, interval or crontab with its
time zone: what the Django admin shows and beat reads) plus a :class:`~.models.Schedule`
row for JobQL's own fields (owner, name, the input as clients read it, the last job).
:mod:`.scheduler` is the beat scheduler; :mod:`gql.django.schedule_store` is the API's store.
"""
