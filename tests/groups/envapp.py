"""A service for the groups end-to-end test: says what its environment holds.

`GET /config` -> `{"mode": $MODE, "secret_sha": sha256($DB_PASSWORD)[:16], "prod_only": ...}`,
`GET /version` -> `{"version": $MODE}`
(a digest, so the test's own traffic never carries the secret), `GET /healthz` -> ok.
Stdlib only: `python envapp.py --port P`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/config":
            secret = os.environ.get("DB_PASSWORD", "")
            body = json.dumps(
                {
                    "mode": os.environ.get("MODE"),
                    "secret_sha": hashlib.sha256(secret.encode()).hexdigest()[:16],
                    "prod_only": os.environ.get("PROD_ONLY"),
                    "pid": os.getpid(),
                }
            )
        elif self.path == "/version":  # what tests.local.support.Load reads
            body = json.dumps({"version": os.environ.get("MODE")})
        else:
            body = "ok"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    # A careless service that prints its secret: the runtime masks it in the instance log.
    print("started, echo=" + os.environ.get("DB_PASSWORD", ""), flush=True)

    def stop(_signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever: off the main thread; requests finish.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
