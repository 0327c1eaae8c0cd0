"""The docs a newcomer reads point at files that are there: every relative link of the
README and of docs/ resolves inside the repository. The README stays a first screen (the
rest is the site's, `make docs`: mkdocs.yml builds it strictly, so a page missing from its
nav or a broken link or anchor fails there), and the operations it shows beyond its tour are
the guide pages' own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("**/*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"\]\(([^)\s]+)\)|`(\.\./[^`]+)`")
GRAPHQL = re.compile(r"```graphql\n.*?```", re.S)
# Where the part of the README that the site's home page includes ends (docs/index.md).
HOME_END = "--8<-- [end:home]"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for match in LINK.finditer(page.read_text()):
        target = (match.group(1) or match.group(2)).split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue  # an anchor on the same page, or http(s), mailto
        resolved = (page.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_is_a_first_screen_and_links_into_the_docs() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move a topic into docs/"


def test_the_operations_the_readme_shows_beyond_its_tour_are_the_guides() -> None:
    """The home page includes the README's tour itself; the examples after it are copies
    of the guide pages' (a test runs the README's), so the two must not drift apart."""
    readme = README.read_text()
    assert HOME_END in readme, "docs/index.md includes the README up to this marker"
    beyond_the_tour = GRAPHQL.findall(readme.split(HOME_END)[1])
    assert beyond_the_tour, "the README shows operations beyond its tour"
    guide = "\n".join(page.read_text() for page in DOCS)
    missing = [block for block in beyond_the_tour if block not in guide]
    assert not missing, f"in the README, not in docs/ as they are: {missing}"


def test_every_library_internal_is_in_the_register_page_under_its_kind() -> None:
    """docs/operating/library-internals.md lists each entry of the register, in the section
    of its kind: a new touch of an internal is documented, with its upstream issue or figure."""
    import importlib

    from tasks.core.compat import Internal

    modules = [
        "gql.compat.register",
        "tasks.core.message_writer",
        "tasks.core.database_backend",
        "tasks.worker.beat",
        "tasks.worker.fast_paths",
        "tasks.worker.poison",
        "tasks.worker.results",
    ]
    internals = [
        value
        for name in modules
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, Internal)
    ]
    page = (ROOT / "docs" / "operating" / "library-internals.md").read_text()
    sections = dict(re.findall(r"^## (\w[\w-]*)\n(.*?)(?=^## |\Z)", page, re.S | re.M))
    heading = {"fix": "Fixes", "speed-up": "Speed-ups", "design": "Design"}
    missing = [
        f"{i.name} ({i.kind})" for i in internals if f"`{i.name}`" not in sections[heading[i.kind]]
    ]
    assert len(internals) >= 11 and not missing
