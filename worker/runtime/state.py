"""The runtime's durable records: services, their instances and recent rollouts.

Everything the runtime must know after a restart is here and is written to
`<data-dir>/state.json` after every change (a temporary file, then a rename, mode 0600
because service env may carry secrets). In-memory fields that cannot survive a restart
(the Popen handle, asyncio tasks, open connection counts, the proxy) are kept apart from
what `saved()` writes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipflow.activities.targets.local.runtime_client import InstanceView
from shipflow.workflows.spec import LocalService

#: Rollouts kept per service (the newest), so that a resumed attempt finds its own.
KEEP_ROLLOUTS = 20


class ApiError(Exception):
    """An answer other than 200, with the wire error code (`invalid`, `not_found`, ...)."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def revision(spec: LocalService, image: str) -> str:
    """What makes two instances interchangeable: image, command, env and cwd.

    A rollout replaces every instance of another revision, so changing a service's
    command or env in the flow rolls it out even when the image stays the same.
    """
    raw = json.dumps([image, spec.command, spec.env, spec.cwd], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


#: At most this many secret values are masked per service (the newest rollouts' first).
MASKED_LIMIT = 200


@dataclass
class Instance:
    id: str
    image: str
    port: int
    spec: LocalService
    revision: str = ""
    pid: int = 0
    start_time: int | None = None
    log: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    started: bool = False  # startup probe passed (or none declared)
    stopping: bool = False
    restarts: int = 0
    last_exit: int | None = None
    last_problem: str = ""
    connections: int = 0
    task: asyncio.Task[None] | None = None
    spawned_at: float = 0.0

    def public(self) -> InstanceView:
        return InstanceView(
            id=self.id,
            image=self.image,
            pid=self.pid,
            port=self.port,
            ready=self.ready,
            state="stopping" if self.stopping else "ready" if self.ready else "starting",
            restarts=self.restarts,
            last_exit=self.last_exit,
            connections=self.connections,
            log=self.log,
        )

    def saved(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "revision": self.revision,
            "spec": self.spec.model_dump(mode="json"),
            "port": self.port,
            "pid": self.pid,
            "start_time": self.start_time,
            "log": self.log,
            "ready": self.ready,
            "restarts": self.restarts,
            "stopping": self.stopping,
        }

    @classmethod
    def restored(cls, item: dict[str, Any], service_spec: dict[str, Any]) -> Instance:
        spec = LocalService.model_validate(item.get("spec") or service_spec)
        return cls(
            id=item["id"],
            image=item["image"],
            port=item["port"],
            spec=spec,
            revision=item.get("revision") or revision(spec, item["image"]),
            pid=item["pid"],
            start_time=item.get("start_time"),
            log=item.get("log", ""),
            restarts=item.get("restarts", 0),
        )


@dataclass
class Rollout:
    id: str
    image: str
    previous_image: str | None
    replicas: int
    revision: str
    spec: dict[str, Any]  # the LocalService this rollout puts in place, as JSON
    previous_spec: dict[str, Any] | None
    started_at: float  # wall clock
    deadline_s: float
    progress_at: float = 0.0  # wall clock of the last progress; the deadline counts from it
    state: str = "running"  # running | succeeded | failed | aborted
    error: str | None = None
    error_code: str | None = None
    created: list[str] = field(default_factory=list)
    ended_at: float | None = None
    strategy: str = "rolling"  # rolling | recreate
    surge: int = 1
    unavailable: int = 0
    rounds: int = 0
    gap_started_at: float | None = None  # recreate: wall clock when the last old instance left
    downtime_s: float | None = None
    # canary: the share of new requests for the new revision, the next canary step to run,
    # the end of a timed pause, an operator's promotion, and the analysis measurements.
    run_id: str | None = None
    step_id: str | None = None
    weight: int | None = None
    step_index: int = 0
    pause_until: float | None = None
    paused: bool = False
    promote_requested: bool = False
    analysis: list[dict[str, Any]] = field(default_factory=list)
    abort_requested: bool = False
    task: asyncio.Task[None] | None = None

    def saved(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "previous_image": self.previous_image,
            "replicas": self.replicas,
            "revision": self.revision,
            "spec": self.spec,
            "previous_spec": self.previous_spec,
            "started_at": self.started_at,
            "deadline_s": self.deadline_s,
            "progress_at": self.progress_at,
            "state": self.state,
            "error": self.error,
            "error_code": self.error_code,
            "created": self.created,
            "ended_at": self.ended_at,
            "strategy": self.strategy,
            "surge": self.surge,
            "unavailable": self.unavailable,
            "rounds": self.rounds,
            "gap_started_at": self.gap_started_at,
            "downtime_s": self.downtime_s,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "weight": self.weight,
            "step_index": self.step_index,
            "pause_until": self.pause_until,
            "paused": self.paused,
            "promote_requested": self.promote_requested,
            "analysis": self.analysis[-50:],
        }

    @classmethod
    def restored(cls, item: dict[str, Any]) -> Rollout:
        known = set(cls.__dataclass_fields__) - {"abort_requested", "task"}
        return cls(**{k: v for k, v in item.items() if k in known})


@dataclass
class Service:
    name: str
    spec: LocalService
    image: str | None = None
    instances: list[Instance] = field(default_factory=list)
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    #: The front port's proxy (`proxy.FrontPort`); typed loosely to keep state free of it.
    front: Any = None
    rr: int = 0
    #: The canary rollout whose weight routes requests right now (None: no split).
    canary: Rollout | None = None
    #: Blue-green: the preview front port of the new version (`proxy.FrontPort`).
    preview: Any = None
    _credit: int = 0
    #: Per revision: recent (monotonic time, seconds, ok) of requests at the front port.
    samples: dict[str, deque[tuple[float, float, bool]]] = field(default_factory=dict)
    #: Secret values the service's instances were given (its rollouts' `redact`, newest
    #: first, the previous ones kept for the instances of an earlier version): masked in
    #: the instance logs. Saved sealed, like env.
    masked: list[str] = field(default_factory=list)

    def add_masked(self, values: list[str]) -> None:
        """Mask `values` from now on, as well as those of the last rollouts (up to a bound)."""
        self.masked = list(dict.fromkeys([*values, *self.masked]))[:MASKED_LIMIT]

    def active_rollout(self) -> Rollout | None:
        return next((r for r in self.rollouts.values() if r.state == "running"), None)

    def add_rollout(self, ro: Rollout) -> None:
        self.rollouts[ro.id] = ro
        while len(self.rollouts) > KEEP_ROLLOUTS:
            self.rollouts.pop(next(iter(self.rollouts)))

    def pick(self, exclude: set[str]) -> Instance | None:
        """Round-robin over the instances that are ready right now (a new connection)."""
        ready = [i for i in self.instances if i.ready and not i.stopping and i.id not in exclude]
        if not ready:
            return None
        self.rr = (self.rr + 1) % len(ready)
        return ready[self.rr]

    def per_request(self) -> bool:
        """Route each HTTP request on its own while a canary splits the traffic.

        Also at all times for a service whose last rollout was a canary: a keep-alive
        connection opened before the next canary then splits too (a spliced connection
        cannot be split later: its request boundaries are unknown).
        """
        strategy = self.spec.strategy
        split = strategy is not None and (strategy.canary is not None or strategy.blue_green is not None)
        return self.canary is not None or split

    def pick_request(self, exclude: set[str]) -> Instance | None:
        """One request: the canary's share by weight, exactly (a running credit, not dice).

        With weight W, W of every 100 requests go to the new revision; when the chosen
        side has no ready instance, the other side serves.
        """
        canary = self.canary
        if canary is None or canary.weight is None:
            return self.pick(exclude)
        self._credit += canary.weight
        to_canary = self._credit >= 100
        if to_canary:
            self._credit -= 100
        ready = [i for i in self.instances if i.ready and not i.stopping and i.id not in exclude]
        side = [i for i in ready if (i.revision == canary.revision) == to_canary] or ready
        if not side:
            return None
        self.rr = (self.rr + 1) % len(side)
        return side[self.rr]

    def record(self, backend: Any, seconds: float, ok: bool) -> None:
        """A request answered (ok: below 500) or failed at the front port, per revision."""
        window = self.samples.get(backend.revision)
        if window is None:
            window = self.samples[backend.revision] = deque(maxlen=20000)
        window.append((time.monotonic(), seconds, ok))

    def saved(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "image": self.image,
            "front_port": self.front.port if self.front else self.spec.port,
            "instances": [i.saved() for i in self.instances],
            "rollouts": [r.saved() for r in self.rollouts.values()],
            "masked": {"env": {str(i): v for i, v in enumerate(self.masked)}},
        }


def restored_masked(saved: dict[str, Any]) -> list[str]:
    """A service's masked values from state.json (saved as a spec's env, so sealed as one)."""
    env = (saved.get("masked") or {}).get("env") or {}
    return [env[k] for k in sorted(env, key=int)]


class EnvSealer:
    """Service env in `state.json` is sealed (AES-256-GCM, a key derived from the runtime's
    key): it holds values of secret groups and `${env.X}` references, and the file, even
    at mode 0600, is copied into backups and bug reports. Everything else stays readable.
    """

    _NONCE = 12

    def __init__(self, key: str | None):
        self._aead: Any = None
        if key:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            digest = hashlib.sha256(b"shipflow runtime state env\0" + key.encode()).digest()
            self._aead = AESGCM(digest)

    def seal(self, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._aead is None or not spec or not spec.get("env"):
            return spec
        nonce = os.urandom(self._NONCE)
        sealed = self._aead.encrypt(nonce, json.dumps(spec["env"]).encode(), b"env")
        return {**spec, "env": {}, "env_sealed": base64.b64encode(nonce + sealed).decode()}

    def open(self, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        if not spec or "env_sealed" not in spec:
            return spec
        out = {k: v for k, v in spec.items() if k != "env_sealed"}
        if self._aead is None:
            raise ValueError("state.json holds sealed env and the runtime has no key")
        from cryptography.exceptions import InvalidTag

        raw = base64.b64decode(spec["env_sealed"])
        try:
            plain = self._aead.decrypt(raw[: self._NONCE], raw[self._NONCE :], b"env")
        except InvalidTag:
            raise ValueError(
                "state.json holds service env sealed with another runtime key: start the "
                "runtime with the key it had (runtime.key / SHIPFLOW_RUNTIME_KEY)"
            ) from None
        out["env"] = json.loads(plain)
        return out

    def walk(self, data: dict[str, Any], change: Any) -> dict[str, Any]:
        """`data` (state.json's services) with `change` applied to every saved spec."""
        out: dict[str, Any] = {}
        for name, svc in data.items():
            svc = {**svc, "spec": change(svc.get("spec"))}
            if "masked" in svc:
                svc["masked"] = change(svc["masked"])
            svc["instances"] = [
                {**i, "spec": change(i.get("spec"))} if "spec" in i else i
                for i in svc.get("instances", [])
            ]
            svc["rollouts"] = [
                {**r, "spec": change(r.get("spec")), "previous_spec": change(r.get("previous_spec"))}
                for r in svc.get("rollouts", [])
            ]
            out[name] = svc
        return out


class StateFile:
    """`state.json`: written whole after every change, read once at start."""

    def __init__(self, path: Path, key: str | None = None):
        self.path = path
        self.sealer = EnvSealer(key)

    def write(self, services: dict[str, Service]) -> None:
        saved = {s.name: s.saved() for s in services.values()}
        data = {"services": self.sealer.walk(saved, self.sealer.seal)}
        tmp = self.path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)

    def read(self) -> dict[str, Any]:
        """The saved services by name (empty at a first start)."""
        if not self.path.exists():
            return {}
        services: dict[str, Any] = json.loads(self.path.read_text()).get("services", {})
        return self.sealer.walk(services, self.sealer.open)
