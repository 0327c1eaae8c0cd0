"""An order: saving a new one starts the job that ships it, once the transaction commits."""

from django.db import models, transaction

from gql.django import enqueue_on_commit


class Order(models.Model):
    owner = models.CharField(max_length=200, db_index=True)  # the JobQL owner: a username
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=20, default="placed")
    job_id = models.CharField(max_length=36, blank=True)  # the fulfil_order job
    created_at = models.DateTimeField(auto_now_add=True)

    def save(self, *args, **kwargs):
        """A new order starts ``fulfil_order`` when, and only if, its row is committed."""
        with transaction.atomic():
            super().save(*args, **kwargs)
            if not self.job_id:
                self.job_id = enqueue_on_commit(
                    "fulfil_order", {"orderId": self.pk}, owner=self.owner
                )
                super().save(update_fields=["job_id"])

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item} for {self.owner} ({self.status})"
