"""`python -m shipflow.worker.runtime`: run the local runtime until SIGTERM or SIGINT.

uvicorn serves the app; the runtime's own tasks (supervision, rollouts, front ports)
run in the same event loop. On SIGTERM or SIGINT the app's lifespan closes the runtime
(front ports closed, state saved) and the process exits 0; the service instances keep
running for the next runtime to adopt.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from shipflow.activities.core.logs import configure_logging
from shipflow.activities.targets.local.runtime_key import KEY_ENV, RuntimeKeyError, ensure_key
from shipflow.worker.runtime.app import create_app
from shipflow.worker.runtime.services import Runtime

log = logging.getLogger("shipflow.runtime")


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop signal ends the process normally (exit 0).

    uvicorn re-raises the signal it caught once it has shut down, which would make the
    runtime die by SIGTERM after a clean stop; launchers read that as a crash.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


async def serve(data_dir: Path, port: int, host: str = "127.0.0.1", key: str | None = None) -> None:
    """Run the runtime until SIGTERM or SIGINT. `key` defaults to the key file's."""
    runtime = Runtime(data_dir, ensure_key(data_dir, key))
    config = uvicorn.Config(
        create_app(runtime, bound_host=host),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    log.info("shipflow local runtime on http://%s:%s, state in %s", host, port, data_dir)
    print(f"shipflow runtime listening on http://{host}:{port}", flush=True)
    await _Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipflow.worker.runtime", description="shipflow local runtime")
    parser.add_argument("--data-dir", type=Path, default=Path(".shipflow/runtime"))
    parser.add_argument("--port", type=int, default=7300)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        key = ensure_key(args.data_dir.resolve(), os.environ.get(KEY_ENV) or None)
    except RuntimeKeyError as e:
        print(f"shipflow runtime: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(args.data_dir.resolve(), args.port, args.host, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
