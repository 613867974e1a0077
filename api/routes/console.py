"""The release console: one HTML shell and its ES modules, served by the API itself.

The console is plain ES modules and CSS under `api/static/console/` (no framework, no
build step, no CDN: it works offline and `make test` builds nothing). The shell holds no
data: its scripts read the JSON API with the bearer token the user gives in the login
form (kept in the browser's sessionStorage), so the pages themselves are open and the API's
roles decide what anyone sees or may do.

The console's own addresses are the API's: a browser that opens `/runs` or `/runs/<id>`
(the ids the CLI prints) asks for `text/html` and gets the shell, which then reads the same
path as JSON. Other clients (CLI, `fetch`, curl) get JSON as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.staticfiles import StaticFiles

from shipflow.api.deps import Viewer
from shipflow.api.errors import error_responses

router = APIRouter(tags=["console"])

STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
#: Paths a browser may open directly: the shell answers them when HTML is wanted.
_PAGES = re.compile(r"^/(?:runs(?:/[^/]+)?|groups(?:/[^/]+)?|flows|stages|login)/?$")


@lru_cache(maxsize=1)
def _shell() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


#: The console loads nothing from elsewhere and runs no inline script: a value that slipped
#: past escaping still could not run or call out.
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def shell() -> HTMLResponse:
    return HTMLResponse(
        _shell(),
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home() -> HTMLResponse:
    """The console's home page (the stage view)."""
    return shell()


class Me(BaseModel):
    name: str
    role: str


@router.get("/me", response_model=Me, responses=error_responses(400, 401, 403, 422))
def whoami(caller: Viewer) -> Me:
    """Who the token belongs to and its role: the console shows actions by role."""
    return Me(name=caller.name, role=caller.role.value)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


def wants_page(request: Request) -> bool:
    """A browser navigating to a console address (not a script reading JSON)."""
    if request.method != "GET" or not _PAGES.match(request.url.path):
        return False
    accept = request.headers.get("accept", "")
    return accept.startswith("text/html") and not request.headers.get("authorization")


async def pages(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: the shell for a browser's navigation to a console address."""
    if wants_page(request):
        return shell()
    return await call_next(request)
