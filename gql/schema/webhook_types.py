"""The GraphQL types of webhooks: what a caller asks for, and each delivery attempt."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

import strawberry

from gql.schema.descriptions import describe_values


@strawberry.enum(description="When a webhook is called.")
class WebhookEvent(Enum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"
    ANY_CHANGE = "ANY"


describe_values(
    WebhookEvent,
    {
        "SUCCESS": "The job or workflow succeeded.",
        "FAILURE": "It failed.",
        "REVOKED": "It was cancelled.",
        "ANY_CHANGE": "Every change of state.",
    },
)


@strawberry.input(description="A URL JobQL POSTs to, signed as Standard Webhooks describes.")
class WebhookInput:
    url: str = strawberry.field(description="An http(s) URL; private networks are refused.")
    events: list[WebhookEvent] = strawberry.field(
        default_factory=lambda: [WebhookEvent.SUCCESS, WebhookEvent.FAILURE, WebhookEvent.REVOKED],
        description="The final states to report (default: all three), or ANY_CHANGE.",
    )


@strawberry.type(description="One attempt to deliver a webhook.")
class WebhookDelivery:
    id: str = strawberry.field(description="The webhook-id header: the same for every retry.")
    event: str | None = strawberry.field(description="The state that was reported.")
    attempt: int = strawberry.field(description="1 for the first attempt, then 2, 3...")
    status: int | None = strawberry.field(description="The receiver's HTTP status, if any.")
    at: datetime = strawberry.field(description="When the attempt was made (UTC).")
    error: str | None = strawberry.field(description="Why the attempt failed, if it did.")

    @classmethod
    def from_log(cls, entry: dict[str, Any]) -> WebhookDelivery:
        return cls(
            id=str(entry.get("id") or ""),
            event=entry.get("event"),
            attempt=int(entry["attempt"]),
            status=entry.get("status"),
            at=datetime.fromisoformat(entry["at"]),
            error=entry.get("error"),
        )
