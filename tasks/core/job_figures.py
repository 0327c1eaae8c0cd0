"""The job counters workers keep in Redis, and how to read them: written by
``tasks.worker.job_metrics``, read by ``/metrics`` (``gql.ops.metrics``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tasks.core.records import PREFIX

METRICS_KEY = f"{PREFIX}:metrics:jobs"


SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


SEP = "|"


@dataclass
class Histogram:
    """Cumulative counts per upper bound, as Prometheus wants them."""

    buckets: dict[float, int] = field(default_factory=dict)
    count: int = 0
    sum: float = 0.0


@dataclass
class JobFigures:
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (task, state)
    run_seconds: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    queue_wait_seconds: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))


def parse(fields: dict[str, str]) -> JobFigures:
    """The hash as figures; every bucket bound is present, a missing one counts zero.

    Fields are ``finished|<task>|<state>``, ``run|<task>|count``, ``run|<task>|sum`` and
    ``run|<task>|b|<bound>``, one value per bucket, not cumulative (``wait`` likewise); a
    task name may hold the separator. ``run|<task>|le|<bound>``, cumulative, is how
    earlier workers wrote them: both add up.
    """
    figures = JobFigures()
    for name, value in fields.items():
        kind, _, rest = name.partition(SEP)
        head, _, last = rest.rpartition(SEP)
        if kind == "finished":
            figures.finished[(head, last)] = int(value)
            continue
        target = {"run": figures.run_seconds, "wait": figures.queue_wait_seconds}.get(kind)
        if target is None:
            continue
        if last == "count":
            target[head].count = int(value)
        elif last == "sum":
            target[head].sum = float(value)
        else:
            task, _, marker = head.rpartition(SEP)
            buckets = target[task].buckets
            bound = float(last)
            if marker == "b":  # counts every bound from this one up
                for upper in SECONDS_BUCKETS:
                    if upper >= bound:
                        buckets[upper] = buckets.get(upper, 0) + int(value)
            else:
                buckets[bound] = buckets.get(bound, 0) + int(value)
    for histograms in (figures.run_seconds, figures.queue_wait_seconds):
        for histogram in histograms.values():
            for bound in SECONDS_BUCKETS:
                histogram.buckets.setdefault(bound, 0)
    return figures
