"""Task input types, validated in process: the shared Email type and the examples' own."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from tasks.core.models import Email
from tasks.examples import SendEmailInput

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
