"""The demo service: a tiny versioned HTTP app that the local target rolls out.

Stdlib only, so it starts in a few tens of milliseconds and needs nothing installed.
It exists to make rollouts observable: `/version` says which build answered, and a few
knobs make a build slow to start or never ready, which is what the rollout tests and
the demo need to show zero downtime and a failed rollout that the old version survives.

Run: `python infra/demo/app.py --port P --version V [--db PATH]`

Endpoints:
    GET /version  -> `{"version": V, "pid": ..., "port": ...}`
    GET /healthz  -> 200 `ok`, or 503 when the build is never-ready
    GET /items    -> the rows of the SQLite DB's `items` table (shows the migration)

Knobs (environment):
    DEMO_STARTUP_DELAY  seconds to wait before listening (a slow start)
    DEMO_NEVER_READY=1  /healthz always answers 503 (also when V contains "broken")
    DEMO_EXIT_AT_START=N  exit with code N before listening (also code 1 when V contains
                        "crash": a build that crashes at start)
    DEMO_HEALTHY_FOR    seconds after which /healthz starts failing (liveness demo)
    DEMO_ERROR_RATE     fraction of /version answers that are 500 (e.g. 0.05: every 20th),
                        a build that mostly works (also 0.05 when V contains "flaky")
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DemoHandler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; with Nagle on, keep-alive clients would wait for
    # a delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/version":
            body = {"version": srv.version, "pid": os.getpid(), "port": srv.server_address[1]}
            self._send(500 if srv.fails_now() else 200, json.dumps(body))
        elif self.path == "/healthz":
            if srv.healthy():
                self._send(200, "ok")
            else:
                self._send(503, "not ready")
        elif self.path == "/items":
            self._send(200, json.dumps(srv.items()))
        else:
            self._send(404, "not found")

    def _send(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if text[:1] in "[{" else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would flood the instance logs during a load test.
        return


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, version: str, db: str | None):
        super().__init__(("127.0.0.1", port), DemoHandler)
        self.version = version
        self.db = db
        self.started = time.monotonic()
        never = os.environ.get("DEMO_NEVER_READY", "") not in ("", "0") or "broken" in version
        self.never_ready = never
        healthy_for = os.environ.get("DEMO_HEALTHY_FOR")
        self.healthy_for = float(healthy_for) if healthy_for else None
        rate = os.environ.get("DEMO_ERROR_RATE") or ("0.05" if "flaky" in version else "0")
        self.error_rate = float(rate)
        self._answers = 0
        self._count_lock = threading.Lock()

    def fails_now(self) -> bool:
        """Every 1/rate-th answer fails (deterministic, so a rate is a rate in any sample)."""
        if self.error_rate <= 0:
            return False
        with self._count_lock:
            self._answers += 1
            return self._answers % max(1, round(1 / self.error_rate)) == 0

    def healthy(self) -> bool:
        if self.never_ready:
            return False
        if self.healthy_for is not None:
            return time.monotonic() - self.started < self.healthy_for
        return True

    def items(self) -> list[dict[str, object]]:
        if not self.db:
            return []
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in conn.execute("SELECT * FROM items")]
            except sqlite3.OperationalError:
                return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shipflow demo service")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--db", default=None)
    args = parser.parse_args(argv)

    exit_code = os.environ.get("DEMO_EXIT_AT_START") or ("1" if "crash" in args.version else "")
    if exit_code:
        print(f"demo {args.version}: exiting at start with {exit_code}", file=sys.stderr)
        return int(exit_code)
    delay = float(os.environ.get("DEMO_STARTUP_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)

    server = DemoServer(args.port, args.version, args.db)

    def _stop(_signum: int, _frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it runs off the main thread;
        # in-flight requests finish on their own threads before the process exits.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    print(f"demo {args.version} listening on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
