"""`EmbeddedStack`: every shipflow process on one machine, owned by one object.

The class is assembled from one module per concern, each class built on the one before:
`config.py` (settings, addresses, the children's environment) < `processes.py` (starting and
stopping a child) < `readiness.py` (when a child counts as started) < `components.py` (what
each child is) < `lifecycle.py` (start and stop of the whole) < `supervision.py` (restarts).
"""

from __future__ import annotations

from shipflow.infra.stack.supervision import Supervision


class EmbeddedStack(Supervision):
    """Temporal, runtime, S3, worker and API on loopback, owned by this object.

    Use as a context manager (`with EmbeddedStack(d) as stack:`) or call `start()` and
    `stop()`; `stop()` is idempotent and also runs at interpreter exit.

    Args:
        data_dir: everything the stack writes: Temporal's and shipflow's SQLite files,
            the runtime's state, `logs/`.
        api_port, temporal_port, ui_port, runtime_port, s3_port: loopback ports.
        metrics_port: where the worker serves its Prometheus metrics (`/metrics`, loopback);
            0 (the default): not served.
        task_queue: the worker's task queue.
        say: where progress lines go (default: stderr); `lambda _: None` silences them.
        extra_env: more environment for the worker and API (e.g. short heartbeats in tests).
        keep_services: leave the local target's services running when the stack stops,
            for the next stack on the same data dir to adopt. By default they are stopped
            with everything else, so nothing outlives the stack.
        max_restarts, restart_window_s: a child that crashes more than `max_restarts`
            times within `restart_window_s` seconds is not restarted again: the stack stops.
        backoff_s, max_backoff_s: the wait before a restart; it doubles with every crash
            in the window, up to `max_backoff_s`.
    """
