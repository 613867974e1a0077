"""A stand-in for Prometheus' HTTP API on loopback: `GET /api/v1/query?query=...`.

Prometheus cannot run here, so tests start this: it answers in Prometheus' own response
format (`{"status": "success", "data": {"resultType": "vector" | "scalar", "result":
...}}`, and `{"status": "error", "errorType": ..., "error": ...}` with the API's status
codes), whatever `answer(query)` returns for the query it got. `queries` keeps every
query asked, for tests that count measurements.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, dict[str, Any]]


def vector(*values: float | str) -> Answer:
    """A success answer with one series per value (values as Prometheus sends them: strings)."""
    now = time.time()
    result = [
        {"metric": {"__name__": "x", "instance": f"pod-{i}"}, "value": [now, str(v)]}
        for i, v in enumerate(values)
    ]
    return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


def scalar(value: float | str) -> Answer:
    return 200, {"status": "success", "data": {"resultType": "scalar", "result": [time.time(), str(value)]}}


def error(code: int, kind: str, message: str) -> Answer:
    return code, {"status": "error", "errorType": kind, "error": message}


class PrometheusStub:
    def __init__(self, answer: Callable[[str], Answer]):
        self.answer = answer
        self.queries: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/api/v1/query":
                    code, body = 404, {"status": "error", "errorType": "not_found", "error": "404 page not found"}
                else:
                    query = parse_qs(url.query).get("query", [""])[-1]
                    stub.queries.append(query)
                    code, body = stub.answer(query)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> PrometheusStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"
