"""The local runtime: supervises service instances and owns their readiness-gated front ports.

Run: `python -m shipflow.worker.runtime --data-dir D --port 7300` (or `shipflow runtime`).

A process of its own, apart from the Temporal worker, because services must keep serving
while workers come and go: a rollout runs here to its end even if the worker that asked
for it is killed, and the next attempt of the step finds it by its `rollout_id` and
waits for it instead of starting over (so no instance is replaced twice).

Why not supervisor, circus or honcho: they restart processes, but none routes new
connections only to instances that pass an in-process readiness probe, drains an
instance before stopping it, or rolls a version out one surge instance at a time. Those
need the proxy, the probes and the supervision in one event loop.

Modules, by concern:
    state        the durable records (services, instances, rollouts) and `state.json`
    supervision  spawn, probe, restart, drain and stop one instance
    probes       one probe attempt and the Kubernetes probe state machine
    proxy        the front port of a service: routes new connections to ready instances
    rollout      replace the instances of a service with a new revision, or revert
    services     the `Runtime`: services, front ports, recovery after a restart
    app          the HTTP face (Starlette) with the key and Host checks
    __main__     the command line: binds the app with uvicorn

Imports: this package may use `shipflow.activities` (the wire models and client in
`activities/targets/local/runtime_client.py`, the key, process helpers) and
`shipflow.workflows` (the service spec); nothing outside it imports it but the launchers
in `shipflow.infra`, and it never imports the Temporal worker beside it.
"""
