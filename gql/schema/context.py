"""What every resolver receives: the services of this process and who is asking."""

from __future__ import annotations

from dataclasses import dataclass

import strawberry
from strawberry.fastapi import BaseContext

from gql.live.broadcast import JobBroadcast
from gql.services.auth import ANONYMOUS, ANONYMOUS_PRINCIPAL, Principal
from gql.services.health import HealthCheck
from gql.services.jobs import JobService
from gql.services.limits import Limits
from gql.services.schedules import ScheduleService
from gql.services.workflows import WorkflowService

__all__ = ["ANONYMOUS", "Context", "Info"]


@dataclass
class Context(BaseContext):
    jobs: JobService
    health: HealthCheck
    broadcast: JobBroadcast
    limits: Limits
    # Set per HTTP request, or once per WebSocket when its connection_init is accepted.
    principal: Principal = ANONYMOUS_PRINCIPAL
    # Subscriptions running on this connection (a WebSocket's context serves them all).
    live_subscriptions: int = 0
    # A WebSocket that ends when its credential does, its streams with it
    # (gql.http.credentials): they need no expiry alarm of their own.
    credential_watched: bool = False
    workflows: WorkflowService | None = None
    schedules: ScheduleService | None = None

    def __post_init__(self) -> None:
        super().__init__()

    @property
    def owner(self) -> str:
        """Who owns what this caller creates; records carry it from the start.

        Read by every resolver that reads or writes jobs, so a WebSocket whose token
        expired gets ``UNAUTHENTICATED`` from its next operation.
        """
        self.principal.check()
        return self.principal.owner

    @property
    def scope(self) -> str | None:
        """Whose jobs this caller may see and touch: its own, or None (an admin's: all)."""
        self.principal.check()
        return self.principal.scope

    async def admitted(self) -> str:
        """The caller's owner, once the mutation rate allows one more mutation."""
        owner = self.owner
        await self.limits.mutation(self.principal)
        return owner


Info = strawberry.Info[Context, None]
