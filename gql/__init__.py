"""JobQL's API: a Strawberry GraphQL schema over Celery, served by FastAPI."""
