"""The project's ASGI application: JobQL at /graphql, Django everywhere else.

Run it with ``uvicorn exampleproject.asgi:application``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()  # sets Django up before the app's imports

from orders.schema import mutations  # noqa: E402

from gql.django import application as jobql  # noqa: E402

application = jobql(django_application, mutations=mutations)
