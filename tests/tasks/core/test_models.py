"""Task input types, validated in process: the shared Email type and the examples' own."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from tasks.core.app import registry
from tasks.core.models import Email
from tasks.examples import GenerateReportInput, SendEmailInput

EMAIL = TypeAdapter(Email)


def test_the_shared_email_type_is_plain_email_validator() -> None:
    assert EMAIL.validate_python("ada@example.com") == "ada@example.com"
    for reserved in ("eve@nowhere.invalid", "eve@host.test"):
        with pytest.raises(ValidationError, match="special-use or reserved"):
            EMAIL.validate_python(reserved)


def test_the_email_example_takes_the_reserved_invalid_domain_to_fail_later() -> None:
    send = SendEmailInput(to="eve@nowhere.invalid", subject="s", body="b")
    assert send.to == "eve@nowhere.invalid", "kept as given: the task fails on it, not the input"


@pytest.mark.parametrize(
    "address", ["not-an-address", "eve@-bad.invalid", "eve@.invalid", "eve@nowhere.test", 7]
)
def test_the_email_example_still_refuses_what_is_not_an_address(address: object) -> None:
    with pytest.raises(ValidationError):
        SendEmailInput(to=address, subject="s", body="b")


def test_a_job_s_message_leaves_out_the_fields_at_their_default() -> None:
    """A field added since the previous release (``logEvery``, 0.10.0) is at its default
    unless the caller uses it, and GraphQL fills it in: in the message, it made the previous
    release's workers refuse every such job (their models forbid unknown fields) during a
    rolling upgrade (tests/faults/test_rolling_upgrade.py). Clients still read every field."""
    spec = registry.get("generate_report")
    assert spec is not None
    kwargs, shown = spec.prepare({"userId": 1, "steps": 3, "stepDelay": 0.1, "logEvery": 0})
    assert kwargs == {"userId": 1, "steps": 3}
    assert shown == {"userId": 1, "steps": 3, "stepDelay": 0.1, "logEvery": 0}
    assert GenerateReportInput.model_validate(kwargs) == GenerateReportInput(user_id=1, steps=3)
