"""The shared kernel, what the API and the worker both read and write, kept apart so the API
never loads the worker: settings, the Redis clients, the job and workflow records and the Lua
scripts that write them, Celery's message format, task declaration (:mod:`.registry`,
:mod:`.models`, :mod:`.progress`), schedules' and webhooks' formats, logs. Nothing here imports
:mod:`tasks.worker` but the ``celeryd_init`` receiver of :mod:`.app`, which attaches it inside a
worker only.
"""
