"""Who sees a dead letter, and the cursor of a page of them, in process."""

from __future__ import annotations

import pytest

from gql.services.dead_letters import _visible, decode_cursor, encode_cursor
from gql.services.errors import BadUserInput
from tasks.core.dead_letters import dead_letter_entry, read


def test_an_entry_is_its_owners_and_every_admins_and_one_without_owner_admins_only() -> None:
    named = read(dead_letter_entry("q", b'{"headers": {"jobql_owner": "alice"}}', "why"))
    nameless = read(dead_letter_entry("q", b"{not json", "why"))
    assert named.owner == "alice" and nameless.owner is None
    assert _visible(named, "alice") and _visible(named, None)
    assert not _visible(named, "bob")
    assert _visible(nameless, None) and not _visible(nameless, "alice")


def test_a_cursor_holds_the_place_and_the_id_and_a_forged_one_is_bad_input() -> None:
    assert decode_cursor(encode_cursor(41, "ab12")) == (41, "ab12")
    with pytest.raises(BadUserInput) as refused:
        decode_cursor("not a cursor")
    assert refused.value.extensions["fields"][0]["path"] == "after"
