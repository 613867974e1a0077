"""A small synchronous client for the shipflow HTTP API, used by the CLI and the demo.

It speaks only the public HTTP contract (see DESIGN.md), never Temporal or the database,
so whatever the CLI can do a user can do with curl. Errors come back as two exception
types the CLI maps to exit codes: `ApiError` (the API answered with an error; 4xx is the
caller's fault) and `ApiUnreachable` (nothing answered, or the answer was not HTTP).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from shipflow.workflows.status import RunStatus


class ApiClientError(Exception):
    """Base of the errors this client raises."""


class ApiUnreachable(ApiClientError):
    """The API did not answer: not started, wrong address, or the connection broke."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the shipflow API at {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(ApiClientError):
    """The API answered with an HTTP error. `problems` are `(path, message)` pairs."""

    def __init__(
        self,
        status_code: int,
        problems: list[tuple[str, str]],
        items: list[dict[str, Any]] | None = None,
    ):
        self.status_code = status_code
        self.problems = problems
        #: The `detail` items as sent, when they were objects (flow problems carry
        #: `line`, `column` and `suggestion` there).
        self.items = items or []
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))

    @property
    def is_client_error(self) -> bool:
        return 400 <= self.status_code < 500


def detail_problems(detail: Any) -> list[tuple[str, str]]:
    """Turn an API error `detail` into `(path, message)` pairs, whatever shape it has.

    shipflow answers `[{"loc": "steps[2].deploy.image", "msg": ...}]` for validation
    errors and a plain string otherwise; FastAPI's own errors carry `loc` as a list.
    All of them print as `path: message`, the same as `shipflow flow validate`.
    """
    if isinstance(detail, str):
        return [("", detail)]
    if isinstance(detail, dict):
        if "msg" in detail or "loc" in detail:
            return [_one_problem(detail)]
        return [("", str(detail.get("message") or detail))]
    if isinstance(detail, list):
        out: list[tuple[str, str]] = []
        for item in detail:
            out += [_one_problem(item)] if isinstance(item, dict) else [("", str(item))]
        return out
    return [("", str(detail))]


def _one_problem(item: dict[str, Any]) -> tuple[str, str]:
    loc = item.get("loc", "")
    if isinstance(loc, list | tuple):
        # FastAPI: ["body", "args", "image"] -> "args.image"; the "body" part is noise.
        parts = [str(p) for p in loc if p not in ("body", "query", "path")]
        loc = ".".join(parts)
    return str(loc), str(item.get("msg", item.get("message", "")))


class ApiClient:
    """The shipflow HTTP API. Every method raises `ApiError` or `ApiUnreachable`.

    Args:
        base_url: e.g. `http://127.0.0.1:8000`.
        token: a Bearer token; None when the API runs without tokens.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            # The token must never follow a redirect to another host.
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the decoded JSON body (None when empty)."""
        return self._decode(self._send(method, path, **kwargs))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ApiUnreachable(self.base_url, _reason(e)) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_problems(response), _items_of(response))
        return response

    def _decode(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiUnreachable(
                self.base_url, f"answered HTTP {response.status_code} with a non-JSON body"
            ) from None

    # ------------------------------------------------------------ flows

    def apply_flow(self, source: str) -> dict[str, Any]:
        """POST /flows with the file's text as written (YAML; JSON is YAML too)."""
        result = self.request(
            "POST", "/flows", content=source.encode(), headers={"Content-Type": "application/yaml"}
        )
        return dict(result or {})

    def list_flows(self) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/flows"), "flows")

    def get_flow(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/flows/{name}") or {})

    def list_backups(self, flow: str) -> list[dict[str, Any]]:
        """GET /flows/{flow}/backups: the complete backups of the flow, newest first."""
        return _items(self.request("GET", f"/flows/{flow}/backups"), "backups")

    # ------------------------------------------------------------ runs

    def start_run(
        self, flow: str, args: dict[str, str] | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """POST /flows/{flow}/runs -> `{run_id, status_url, ui_url}`."""
        body = {"args": args or {}, "reason": reason}
        return dict(self.request("POST", f"/flows/{flow}/runs", json=body) or {})

    def list_runs(
        self,
        *,
        flow: str | None = None,
        stage: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return self.runs_page(flow=flow, stage=stage, status=status, limit=limit)[0]

    def runs_page(
        self, *, cursor: str | None = None, **filters: Any
    ) -> tuple[list[dict[str, Any]], str | None]:
        """GET /runs: one page (filters as the API names them) and the next page's cursor
        (None on the last page)."""
        query = {k: v for k, v in {**filters, "cursor": cursor}.items() if v is not None}
        response = self._send("GET", "/runs", params=query)
        return _items(self._decode(response), "runs"), response.headers.get("x-next-cursor")

    def promote(self, run_id: str, step: str | None = None) -> Any:
        """POST /runs/{id}/promote: a canary waiting in a pause goes on to its next step."""
        return self.request("POST", f"/runs/{run_id}/promote", json={"step": step})

    def run_json(self, run_id: str) -> dict[str, Any]:
        """GET /runs/{id} as sent: RunStatus fields plus `ui_url` and `trigger`."""
        return dict(self.request("GET", f"/runs/{run_id}") or {})

    def get_run(self, run_id: str) -> tuple[RunStatus, str | None]:
        """The run's status and its Temporal Web UI link."""
        raw = self.run_json(run_id)
        return RunStatus.model_validate(raw), raw.get("ui_url")

    def cancel(self, run_id: str) -> Any:
        return self.request("POST", f"/runs/{run_id}/cancel")

    def approve(self, run_id: str, step: str, comment: str | None = None) -> Any:
        return self.request(
            "POST", f"/runs/{run_id}/approve", json={"step": step, "comment": comment}
        )

    def reject(self, run_id: str, step: str | None = None, comment: str | None = None) -> Any:
        return self.request(
            "POST", f"/runs/{run_id}/reject", json={"step": step, "comment": comment}
        )

    def rollback(
        self,
        run_id: str,
        reason: str | None = None,
        *,
        restore_data: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        path = f"/runs/{run_id}/rollback" + ("?dry_run=true" if dry_run else "")
        body = {"reason": reason, "restore_data": restore_data}
        return dict(self.request("POST", path, json=body) or {})

    def retry(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/runs/{run_id}/retry") or {})

    def step_logs(self, run_id: str, step: str, after: int = 0) -> dict[str, Any]:
        """One page of a step's log lines after line `after`."""
        body: dict[str, Any] = self.request(
            "GET", f"/runs/{quote(run_id, safe='')}/steps/{quote(step, safe='')}/logs",
            params={"after": after, "limit": 5000},
        )
        return body

    def stream_step_logs(self, run_id: str, step: str, after: int = 0) -> Iterator[tuple[str, Any]]:
        """The step's log as server-sent events: `(event, data)` until the step is over."""
        path = f"/runs/{quote(run_id, safe='')}/steps/{quote(step, safe='')}/logs/stream"
        try:
            with self._http.stream(
                "GET", path, params={"after": after}, timeout=httpx.Timeout(None, connect=5.0),
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _error_problems(response))
                event, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data += line[6:]
                    elif line == "" and data:
                        yield event, json.loads(data)
                        if event == "end":
                            return
                        event, data = "message", ""
        except httpx.TransportError as e:
            raise ApiUnreachable(self.base_url, _reason(e)) from None

    def healthz(self) -> Any:
        return self.request("GET", "/healthz")


def _reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "connection refused"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.LocalProtocolError):
        # Its message would quote the offending header, i.e. the token: never print it.
        return "the request could not be sent (is --token / SHIPFLOW_TOKEN one line, printable?)"
    return type(error).__name__


def _error_problems(response: httpx.Response) -> list[tuple[str, str]]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:300]
        return [("", f"HTTP {response.status_code}" + (f": {text}" if text else ""))]
    if isinstance(body, dict) and "detail" in body:
        problems = detail_problems(body["detail"])
    else:
        problems = detail_problems(body)
    return problems or [("", f"HTTP {response.status_code}")]


def _items_of(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return []
    return [dict(item) for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    """A listing is a JSON array; accept `{key: [...]}` too, so paging can be added later."""
    if isinstance(body, dict):
        body = body.get(key, body.get("items", []))
    return [dict(item) for item in body or []]
