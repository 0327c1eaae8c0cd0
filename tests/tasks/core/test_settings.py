"""Settings come from one flat environment and fall into groups: each setting in exactly one,
each group given whole to the code it concerns, and the settings page lists them as the code
does."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tasks.core.settings import GROUPS, Settings

PAGE = Path(__file__).parents[3] / "docs" / "guide" / "settings.md"


def test_every_setting_is_in_exactly_one_group() -> None:
    counted = Counter(name for names in GROUPS.values() for name in names)
    assert {name for name, times in counted.items() if times > 1} == set()
    assert set(counted) == set(Settings.model_fields)


@pytest.mark.parametrize("group", ["auth", "http", "limits", "subscriptions", "webhooks"])
def test_a_group_is_the_settings_it_names_read_from_the_same_object(group: str) -> None:
    settings = Settings(env="test").model_copy(
        update={"max_body_bytes": 5_000, "rate_limit_mutations": 7, "webhook_queue": "hooks"}
    )
    view = getattr(settings, group)
    for name in GROUPS[group]:
        assert getattr(view, name) == getattr(settings, name), name
    with pytest.raises(AttributeError):
        view.redis_url  # noqa: B018 - a group holds its own settings and nothing else


def test_a_group_knows_what_is_derived_from_its_settings() -> None:
    keyed = Settings(env="test", auth_mode="api_key", api_keys={"0" * 64: "alice"})
    assert keyed.auth.methods == {"api_key"} and keyed.limits.authenticated
    assert not Settings(env="test").auth.methods and not Settings(env="test").limits.authenticated


def test_the_settings_page_lists_every_setting_under_its_group() -> None:
    sections = re.split(r"^### ", PAGE.read_text(), flags=re.M)[1:]
    listed = {
        section.splitlines()[0]: set(re.findall(r"`JOBQL_([A-Z0-9_]+)`", section))
        for section in sections
    }
    by_group = [{f"{name.upper()}" for name in names} for names in GROUPS.values()]
    assert sorted(map(sorted, listed.values())) == sorted(map(sorted, by_group))
