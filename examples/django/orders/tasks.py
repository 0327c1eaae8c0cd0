"""This app's background jobs, found by Celery's autodiscovery (``orders.tasks``).

``fulfil_order`` is a typed JobQL task: it gets ``fulfilOrder(input: ...)`` in the schema.
``count_orders`` is a plain ``@shared_task``: JobQL runs and lists it, ``enqueue`` starts it.
"""

from celery import shared_task
from pydantic import Field

from orders.models import Order
from tasks import JobContext, JobModel, job


class FulfilOrderInput(JobModel):
    order_id: int = Field(ge=1)


class FulfilOrderOutput(JobModel):
    order_id: int
    status: str


@job()
def fulfil_order(input: FulfilOrderInput, job: JobContext) -> FulfilOrderOutput:
    """Pack and ship an order. It starts after the order's transaction committed, so the
    row is always there to read."""
    order = Order.objects.get(pk=input.order_id)
    job.progress(1, 2, "packing")
    Order.objects.filter(pk=order.pk).update(status="shipped")
    job.progress(2, 2, "shipped")
    return FulfilOrderOutput(order_id=order.pk, status="shipped")


@shared_task(name="orders.count_orders")
def count_orders(status: str = "shipped") -> int:
    """How many orders are in ``status`` (a plain Celery task: enqueue it by name)."""
    return Order.objects.filter(status=status).count()
