"""``python -m gql.export``: print the SDL that ``schema.graphql`` must equal."""

from __future__ import annotations

import sys

from gql.app import load_task_modules
from gql.schema.root import build_schema
from tasks.core.app import registry
from tasks.core.settings import Settings


def sdl(settings: Settings | None = None) -> str:
    load_task_modules(settings or Settings())
    return build_schema(registry).as_str() + "\n"


if __name__ == "__main__":
    sys.stdout.write(sdl())
