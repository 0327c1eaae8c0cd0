"""The dashboard as committed in gql/http/static/dashboard (`npm run build` in dashboard/ writes
it): a page that runs under the strict Content-Security-Policy it is served with, with every
file it loads present, and a trusted-documents manifest that lists each operation of
dashboard/src/operations, valid against schema.graphql, for JOBQL_TRUSTED_DOCUMENTS."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser

from graphql import OperationDefinitionNode, build_schema, parse, validate

from gql.services.trusted import TrustedDocuments
from tests.conftest import ROOT

BUILT = ROOT / "gql" / "http" / "static" / "dashboard"
# A chunk's name as another chunk imports it ("./JobsScreen-Ab12.js").
CHUNK = re.compile(r"[\"'`](?:\./|assets/)?([\w-]+\.(?:js|css))[\"'`]")
SOURCE = ROOT / "dashboard" / "src" / "operations"


class _Page(HTMLParser):
    """The URLs the page loads, and what of it would run inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [value for key, value in found.items() if key in ("src", "href") and value]
        if tag == "script" and not found.get("src"):
            self.inline.append("a <script> without src")
        self.inline += [f"{tag} {key}" for key in found if key.startswith("on")]


def test_the_page_runs_no_inline_script_and_loads_only_its_own_files() -> None:
    page = _Page()
    page.feed((BUILT / "index.html").read_text())
    assert not page.inline, "script-src 'self' refuses inline scripts and handlers"
    assert page.urls
    for url in page.urls:
        if url.startswith("data:"):
            continue
        # Relative: the page is served at <prefix>/dashboard/, the prefix a host app's.
        assert url.startswith("./"), url
        assert (BUILT / url).is_file(), f"{url} is not committed"


def test_every_chunk_a_chunk_imports_is_committed_and_the_styles_load_nothing_else() -> None:
    assets = BUILT / "assets"
    names = {path.name for path in assets.iterdir()}
    for script in assets.glob("*.js"):
        for name in CHUNK.findall(script.read_text()):
            assert name in names, f"{script.name} imports {name}, which is not committed"
    for style in assets.glob("*.css"):
        text = style.read_text()
        assert "@import" not in text and not re.search(r"url\(\s*['\"]?(https?:)?//", text)


def test_the_manifest_lists_every_operation_the_page_sends_each_valid() -> None:
    manifest = BUILT / "persisted-query-manifest.json"
    assert len(TrustedDocuments.load(manifest)) > 0, "the server reads it"
    operations = json.loads(manifest.read_text())["operations"]
    shipped = {
        node.name.value
        for path in SOURCE.glob("*.graphql")
        for node in parse(path.read_text()).definitions
        if isinstance(node, OperationDefinitionNode) and node.name
    }
    assert {op["name"] for op in operations} == shipped
    assert {"subscription", "query", "mutation"} <= {op["type"] for op in operations}
    schema = build_schema((ROOT / "schema.graphql").read_text())
    for op in operations:
        assert op["id"] == hashlib.sha256(op["body"].encode()).hexdigest(), op["name"]
        errors = validate(schema, parse(op["body"]))
        assert not errors, (op["name"], [e.message for e in errors])
