"""The shop's own GraphQL mutation, served beside JobQL's: write a model and start a job."""

from typing import Annotated

import strawberry
from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Sum

from gql.schema.context import Info
from gql.schema.types import Job
from gql.services.errors import BadUserInput
from orders.models import Order

# Units one owner may have ordered in all: checked after the new order is written.
ORDER_LIMIT = 10


@strawberry.type(name="Order", description="An order of the example shop.")
class OrderType:
    id: strawberry.ID
    item: str
    quantity: int
    status: str
    job_id: strawberry.ID = strawberry.field(description="The job that ships the order.")

    @strawberry.field(description="The job that ships the order, as `job(id)` returns it.")
    async def job(self, info: Info) -> Job | None:
        snapshot = await info.context.jobs.get(str(self.job_id), info.context.scope)
        return Job.from_snapshot(snapshot) if snapshot else None


def place(owner: str, item: str, quantity: int) -> Order:
    """One transaction: the order (whose save starts its job on commit) and the limit."""
    if not 1 <= quantity <= ORDER_LIMIT:
        raise BadUserInput.field("quantity", f"must be 1 to {ORDER_LIMIT}")
    with transaction.atomic():
        order = Order.objects.create(owner=owner, item=item, quantity=quantity)
        ordered = Order.objects.filter(owner=owner).aggregate(total=Sum("quantity"))["total"]
        if ordered > ORDER_LIMIT:
            # Rolls back the order, and with it the job its save promised.
            raise BadUserInput.field(
                "quantity", f"you may order {ORDER_LIMIT} units in all; this makes {ordered}"
            )
    return order


async def place_order(
    info: Info,
    item: Annotated[str, strawberry.argument(description="What to order.")],
    quantity: Annotated[int, strawberry.argument(description="How many units.")],
) -> OrderType:
    owner = await info.context.admitted()
    order = await sync_to_async(place)(owner, item, quantity)
    return OrderType(
        id=strawberry.ID(str(order.pk)),
        item=order.item,
        quantity=order.quantity,
        status=order.status,
        job_id=strawberry.ID(order.job_id),
    )


mutations = [
    strawberry.mutation(
        place_order,
        name="placeOrder",
        description="Place an order and start the job that ships it, in one transaction: "
        "an order that is refused starts no job.",
    )
]
