"""An example shop: Django models and views, with JobQL serving its background jobs."""

# Django's Celery convention: the app is loaded with the project, so that @shared_task
# and autodiscovery bind to it.
from exampleproject.celery import app as celery_app

__all__ = ["celery_app"]
