"""A task written the usual Celery way, loaded by the test services next to the examples."""

from __future__ import annotations

import time
from typing import Any

from tasks.app import celery_app


@celery_app.task(bind=True, name="native.countdown")
def countdown(self: Any, n: int = 3, delay: float = 0.1) -> dict[str, int]:
    """Count to n, reporting progress with Celery's own update_state."""
    for i in range(1, n + 1):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": i, "total": n, "status": "counting"})
    return {"counted": n}
