"""The live jobs dashboard at ``/dashboard/``: a TypeScript and React client of this API (source
in ``dashboard/``, built by ``npm run build`` there into ``static/dashboard``, committed, so a
service needs no Node). The page is one file under the same strict Content-Security-Policy as
GraphiQL; its scripts and styles have content-hashed names. Every operation it sends is in its
own trusted-documents manifest, which the API trusts beside ``JOBQL_TRUSTED_DOCUMENTS``, so
the dashboard keeps working where only shipped operations may run.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gql.http.graphiql import CSP, STATIC

PATH = "/dashboard"
BUILT = STATIC / "dashboard"
MANIFEST = BUILT / "persisted-query-manifest.json"


def manifest() -> Path | None:
    """The built dashboard's trusted-documents manifest, when it was built."""
    return MANIFEST if MANIFEST.is_file() else None


async def page(request: Request) -> Response:
    index = BUILT / "index.html"
    if not index.is_file():
        return PlainTextResponse("the dashboard is not built: npm run build in dashboard/", 404)
    return HTMLResponse(
        index.read_text(),
        # The page is small and names its assets by content: always ask for the newest.
        headers={
            "content-security-policy": CSP,
            "x-content-type-options": "nosniff",
            "cache-control": "no-cache",
            "referrer-policy": "no-referrer",
        },
    )


async def with_slash(request: Request) -> RedirectResponse:
    # Relative, so it holds behind any proxy or mount: the page's own URLs are relative too.
    return RedirectResponse("dashboard/", status_code=308)


def routes() -> list[BaseRoute]:
    """The page, its content-hashed assets, and the bare path sent on to the page."""
    return [
        Route(PATH, with_slash, methods=["GET"], include_in_schema=False),
        Route(f"{PATH}/", page, methods=["GET"], include_in_schema=False),
        Mount(f"{PATH}/assets", StaticFiles(directory=BUILT / "assets", check_dir=False)),
    ]
