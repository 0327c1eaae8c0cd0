"""The shared kernel: what the API and the worker both read and write.

Settings, the Redis clients, the job and workflow records and the Lua scripts that write them,
Celery's message format, task declaration (:mod:`.registry`, :mod:`.models`,
:mod:`.progress`), schedules' and webhooks' formats, logs. The API imports only this part of
``tasks``; nothing here imports ``tasks.worker``.
"""
