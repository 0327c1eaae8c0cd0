"""The worker: the Celery app a worker runs and what runs inside it.

The task base that records each run, the broker transport that survives a Redis restart,
heartbeats and the reaper of lost workers, poison messages, result backends, beat, webhook
deliveries, and the worker-side fast paths. The API never imports it.
"""
