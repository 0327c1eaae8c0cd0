"""Listing jobs: a Relay connection, newest first, filtered inside Redis."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.conftest import GraphQL

PAGE = """
query($first: Int, $after: String, $filter: JobFilter) {
  jobs(first: $first, after: $after, filter: $filter) {
    edges { cursor node { id task state createdAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


def _enqueue_many(api: GraphQL, count: int) -> list[str]:
    aliases = " ".join(
        f'j{i}: enqueue(task: "process_data", input: {{data: {i}, delay: 0}}) {{ id }}'
        for i in range(count)
    )
    data = api.data(f"mutation {{ {aliases} }}")
    return [data[f"j{i}"]["id"] for i in range(count)]


def test_pagination_walks_every_job_once_newest_first(api: GraphQL) -> None:
    since = datetime.now(UTC).isoformat()
    created = _enqueue_many(api, 23)
    job_filter = {"task": "process_data", "createdAfter": since}

    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = api.data(PAGE, {"first": 5, "after": after, "filter": job_filter})["jobs"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        pages += 1
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]

    assert pages == 5
    assert seen == list(reversed(created)), "every job once, newest first"


def test_new_jobs_do_not_shift_a_page_being_walked(api: GraphQL) -> None:
    since = datetime.now(UTC).isoformat()
    created = _enqueue_many(api, 6)
    job_filter = {"task": "process_data", "createdAfter": since}
    first = api.data(PAGE, {"first": 3, "filter": job_filter})["jobs"]
    _enqueue_many(api, 4)  # newer jobs arrive at the front while the client pages on

    rest = api.data(
        PAGE, {"first": 10, "after": first["pageInfo"]["endCursor"], "filter": job_filter}
    )["jobs"]

    assert [e["node"]["id"] for e in rest["edges"]] == list(reversed(created))[3:]


def test_filters_by_state_task_and_creation_time(api: GraphQL) -> None:
    since = datetime.now(UTC).isoformat()
    failed = api.data(
        'mutation { sendEmail(input: {to: "a@b.invalid", subject: "s", body: "b"}) { id } }'
    )["sendEmail"]["id"]
    ok = _enqueue_many(api, 2)
    api.wait_done(failed)
    for job_id in ok:
        api.wait_done(job_id)
    until = datetime.now(UTC).isoformat()

    def ids(job_filter: dict[str, object]) -> list[str]:
        page = api.data(PAGE, {"first": 50, "filter": job_filter})["jobs"]
        return [e["node"]["id"] for e in page["edges"]]

    assert ids({"states": ["FAILURE"], "createdAfter": since}) == [failed]
    assert ids({"task": "process_data", "createdAfter": since}) == list(reversed(ok))
    assert ids({"states": ["SUCCESS", "FAILURE"], "createdAfter": since}) == [*reversed(ok), failed]
    assert ids({"createdAfter": until}) == []
    assert failed not in ids({"createdBefore": since})


def test_first_zero_is_an_empty_page(api: GraphQL) -> None:
    page = api.data(PAGE, {"first": 0})["jobs"]
    assert page["edges"] == [] and page["pageInfo"]["endCursor"] is None
