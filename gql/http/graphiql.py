"""GraphiQL at ``/graphql``, served by JobQL itself with no CDN, so it works on a machine without
internet and under a strict Content-Security-Policy: the page loads GraphiQL, its Explorer plugin
and React from ``/graphiql/`` (built from the npm packages pinned in
``tests/e2e/package-lock.json`` by ``tests/e2e/build-graphiql.mjs``; ``VERSIONS.json`` says
which), then ``jobql-graphiql.js``: the README's tour as the first tab, and a Headers tab whose
values reach graphql-ws's ``connection_init`` too.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS_PATH = "/graphiql"
# Everything from this origin, nothing inline but styles (GraphiQL's editors set them).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def page() -> HTMLResponse:
    return HTMLResponse(
        (STATIC / "graphiql.html").read_text(),
        headers={"content-security-policy": CSP, "x-content-type-options": "nosniff"},
    )


def assets() -> StaticFiles:
    """The page's scripts and styles, cached by browsers and revalidated by ETag."""
    return StaticFiles(directory=STATIC / "graphiql")
