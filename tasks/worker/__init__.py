"""The worker: what runs inside a Celery worker, apart from :mod:`tasks.core` so the API never
imports it. The broker transport that survives a Redis restart and its start-up checks, the
heartbeats and the reaper of lost workers, poison messages, result backends, job metrics, beat,
webhook deliveries, and the signal receivers that record what the task base cannot see.
"""
