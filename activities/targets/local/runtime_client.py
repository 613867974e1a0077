"""The one way into the local runtime: its wire models and a small synchronous client.

The runtime (`shipflow.worker.runtime`) is a process of its own; the `local` target, the
embedded stack and the benchmarks talk to it over loopback HTTP. The request and answer
bodies are declared here, once, and the runtime's HTTP face imports them, so both ends
agree on every field (the runtime may import from activities; activities never import
the runtime).

Every call but `/healthz` carries `Authorization: Bearer <key>` (see `runtime_key`).
Errors are `{"error": <code>, "detail": <message>}`; `call` maps them to the target's
error classes only in `raise_for`, so callers that only want the status can have it.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import Conflict, Invalid, NotFound, TargetError, Transient
from shipflow.activities.targets.local.runtime_key import RuntimeKeyError, auth_headers, client_key
from shipflow.workflows.spec import LocalService

RolloutState = Literal["running", "succeeded", "failed", "aborted"]


class RolloutBody(BaseModel):
    """`PUT /services/{name}/rollout`: put `spec` in place at `image`, or resume `rollout_id`."""

    spec: LocalService
    image: str = Field(min_length=1)
    rollout_id: str | None = Field(None, description="same id, same rollout: a resumed attempt")
    run_id: str | None = Field(None, description="the run and step that asked, for `shipflow promote`")
    step_id: str | None = None
    redact: list[str] = Field(
        default_factory=list,
        description="secret values in the service's env: masked in its instance logs",
    )

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            yield name, (f"<{len(value)} values>" if name == "redact" else value)


class InstanceView(BaseModel):
    id: str
    image: str
    pid: int
    port: int
    ready: bool
    state: Literal["starting", "ready", "stopping"]
    restarts: int = 0
    last_exit: int | None = None
    connections: int = 0
    log: str = ""


class RolloutView(BaseModel):
    """A rollout's progress and result (`GET /services/{name}/rollouts/{id}`)."""

    id: str
    rollout_id: str
    service: str
    image: str
    previous_image: str | None
    replicas: int
    revision: str
    started_at: float
    deadline_s: float
    progress_at: float
    state: RolloutState
    error: str | None = None
    error_code: str | None = None
    created: list[str] = []
    ended_at: float | None = None
    updated: int = Field(0, description="instances of the new revision")
    ready: int = Field(0, description="ready instances of the new revision")
    total: int = Field(0, description="the replicas the rollout puts in place")
    instances: list[InstanceView] = []
    strategy: str = Field("rolling", description="rolling | recreate")
    surge: int = Field(1, description="rolling: instances allowed above the replicas")
    unavailable: int = Field(0, description="rolling: ready instances allowed below the replicas")
    rounds: int = Field(0, description="batches of new instances started")
    downtime_s: float | None = Field(None, description="recreate: seconds with nothing serving")
    weight: int | None = Field(None, description="canary: percent of new requests to the new version")
    step_index: int = Field(0, description="canary: the next canary step to run")
    paused: bool = Field(False, description="canary: waiting in a pause step")
    analysis: list[dict[str, Any]] = Field([], description="canary: the analysis measurements")
    run_id: str | None = None
    step_id: str | None = None


class ServiceView(BaseModel):
    """One service (`GET /services/{name}`; `GET /services` is a list of these)."""

    name: str
    image: str | None
    front_port: int | None
    replicas: int
    ready: int
    instances: list[InstanceView] = []
    rollout: str | None = Field(None, description="the running rollout's id")


class ErrorBody(BaseModel):
    error: str
    detail: str


class RuntimeClient:
    """Loopback HTTP calls to one runtime, with its key. One connection per call.

    The key is read when first needed (the runtime may write its key file after this
    client was built) and kept for the client's life, which is one activity.
    """

    def __init__(self, url: str, settings: Settings, *, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._settings = settings
        self._timeout = httpx.Timeout(timeout, connect=2.0)
        self._key: str | None = None

    def call(self, method: str, path: str, body: BaseModel | None = None) -> tuple[int, Any]:
        """One call: (status, decoded JSON answer).

        Raises:
            TargetError: no key can be read (not retryable).
            Transient: the runtime is unreachable.
        """
        try:
            self._key = self._key or client_key(self._settings)
        except RuntimeKeyError as e:
            raise TargetError(str(e), retryable=False) from None
        try:
            response = httpx.request(
                method,
                self.url + path,
                json=body.model_dump(mode="json") if body is not None else None,
                headers=auth_headers(self._key),
                timeout=self._timeout,
            )
        except httpx.TransportError as e:
            raise Transient(
                f"the local runtime at {self.url} is unreachable ({type(e).__name__}: {e}); "
                "start it with `shipflow runtime` (or `shipflow dev`)"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = {"detail": response.text}
        return response.status_code, data

    def services(self) -> list[ServiceView]:
        status, data = self.call("GET", "/services")
        raise_for(status, data)
        return [ServiceView.model_validate(item) for item in data]

    def service(self, name: str) -> ServiceView | None:
        status, data = self.call("GET", f"/services/{name}")
        if status == 404:
            return None
        raise_for(status, data)
        return ServiceView.model_validate(data)

    def put_rollout(self, name: str, body: RolloutBody) -> RolloutView:
        status, data = self.call("PUT", f"/services/{name}/rollout", body)
        raise_for(status, data)
        return RolloutView.model_validate(data)

    def rollout(self, name: str, rollout_id: str) -> RolloutView:
        status, data = self.call("GET", f"/services/{name}/rollouts/{rollout_id}")
        raise_for(status, data)
        return RolloutView.model_validate(data)

    def promote(self, name: str, rollout_id: str) -> RolloutView:
        status, data = self.call("POST", f"/services/{name}/rollouts/{rollout_id}/promote")
        raise_for(status, data)
        return RolloutView.model_validate(data)

    def abort(self, name: str, rollout_id: str) -> RolloutView:
        status, data = self.call("POST", f"/services/{name}/rollouts/{rollout_id}/abort")
        raise_for(status, data)
        return RolloutView.model_validate(data)


def raise_for(status: int, body: Any) -> None:
    """Turn an error answer of the runtime into the target's error class.

    Raises:
        TargetError: 401/403 (the key or address is wrong: not retryable), other codes.
        Conflict: another rollout of the service is running (retryable).
        NotFound, Invalid: 404; 400, 409, 422.
    """
    if status < 400:
        return
    body = body if isinstance(body, dict) else {"detail": body}
    detail = str(body.get("detail") or body)
    code = body.get("error")
    if status in (401, 403):
        raise TargetError(
            f"the local runtime refused the call ({detail}); the worker sends the key from "
            "SHIPFLOW_RUNTIME_KEY or SHIPFLOW_RUNTIME_KEY_FILE (default "
            "<SHIPFLOW_DATA_DIR>/runtime/runtime.key)",
            retryable=False,
        )
    if code == "conflict":
        raise Conflict(detail)
    if status == 404:
        raise NotFound(detail)
    if status in (400, 409, 422):
        raise Invalid(detail)
    raise TargetError(f"local runtime answered {status}: {detail}")
