"""The error bodies the API sends, as OpenAPI documents them.

Every error is `{"detail": ...}`: a message, or for invalid input a list of
`{"loc": "steps[2].deploy.image", "msg": "field required"}` (see `shipflow.api.app`). Routers
declare the codes they can answer with `responses=error_responses(...)`, so the
OpenAPI document (and a client generated from it) matches what is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_DESCRIPTIONS = {
    400: "Malformed request (e.g. a webhook payload that is not a push)",
    401: "Missing or invalid credentials (bearer token, webhook signature)",
    403: "The caller's role does not allow this",
    404: "No such flow, run or schedule",
    409: "Not possible in the current state (e.g. the run is already over)",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input; `detail` lists each problem with the path to the field",
    503: "A backing service (Temporal, the database) or a setting is not available",
    504: "No worker answered in time",
}


class Problem(BaseModel):
    """One invalid field: where it is (dotted, `[i]` for list items) and what is wrong."""

    loc: str
    msg: str
    line: int | None = Field(None, description="flow files: the line the problem is on (1-based)")
    column: int | None = Field(None, description="flow files: its column (1-based)")
    suggestion: str | None = Field(None, description="the known name closest to what was written")


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str | list[Problem] = Field(description="a message, or one entry per invalid field")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router or route: each code with the `ErrorBody` model."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}
