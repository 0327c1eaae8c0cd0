"""JobQL's Celery side: the app, the job base and the example tasks."""
