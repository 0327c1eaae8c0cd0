"""What every resolver receives: the services of this process and who is asking."""

from __future__ import annotations

from dataclasses import dataclass

import strawberry
from strawberry.fastapi import BaseContext

from gql.broadcast import JobBroadcast
from gql.health import HealthCheck
from gql.jobs import JobService
from gql.workflows import WorkflowService

# Until authentication is configured every caller is this owner; records carry it already,
# so reads, lists and streams are scoped by owner from the start.
ANONYMOUS = "anonymous"


@dataclass
class Context(BaseContext):
    jobs: JobService
    health: HealthCheck
    broadcast: JobBroadcast
    owner: str = ANONYMOUS
    workflows: WorkflowService | None = None

    def __post_init__(self) -> None:
        super().__init__()


Info = strawberry.Info[Context, None]
