"""Celery's results in django-celery-results' table, while JobQL answers from its own records."""

from __future__ import annotations

from tests.conftest import GraphQL


def test_a_finished_job_is_in_django_celery_results_and_in_jobql(alice: GraphQL) -> None:
    from django_celery_results.models import TaskResult

    order = alice.data('mutation { placeOrder(item: "pen", quantity: 1) { jobId } }')
    job_id = order["placeOrder"]["jobId"]

    job = alice.wait_done(job_id)

    stored = TaskResult.objects.get(task_id=job_id)
    assert (stored.status, stored.task_name) == ("SUCCESS", "fulfil_order")
    assert '"status": "shipped"' in stored.result
    assert job["result"] == {"orderId": job["input"]["orderId"], "status": "shipped"}
