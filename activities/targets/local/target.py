"""The `local` target: services as processes on this machine, run by the local runtime.

The target itself holds no state: it translates the Target protocol into calls to the
runtime's loopback HTTP API (see `shipflow.activities.targets.local.runtime`) and follows a
rollout until it ends. The rollout runs inside the runtime, so a worker that dies in the
middle loses nothing: the next attempt asks for the same `rollout_id` (from the last
heartbeat, or derived from run, step, service and image when none was sent) and the
runtime answers with the rollout already under way instead of starting another.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import httpx

from shipflow.activities.core.settings import Settings
from shipflow.activities.envrefs import resolve_env
from shipflow.activities.targets.base import (
    Conflict,
    Invalid,
    JobRequest,
    JobResult,
    NotFound,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    TargetError,
    Transient,
)
from shipflow.activities.targets.local.jobs import run_local_job
from shipflow.activities.targets.local.runtime_key import RuntimeKeyError, auth_headers, client_key
from shipflow.workflows.spec import LocalService, Probes
from shipflow.workflows.spec import LocalTarget as LocalTargetSpec

POLL_S = 0.1
#: How long the runtime may be unreachable in the middle of a rollout before the attempt
#: gives up (retryable: the next attempt resumes the same rollout).
UNREACHABLE_GRACE_S = 10.0
ABORT_WAIT_S = 120.0


class RolloutCancelled(TargetError):
    """The run asked the step to stop; the rollout was aborted and the old version serves."""

    retryable = False


class LocalTarget:
    """Target protocol over the local runtime. `spec` is the flow's `target:` section."""

    def __init__(self, spec: dict[str, Any], settings: Settings):
        self.spec = LocalTargetSpec.model_validate(spec)
        self.url = (self.spec.runtime or settings.runtime_url).rstrip("/")
        self._timeout = httpx.Timeout(10.0, connect=2.0)
        self.jobs_dir = settings.data_dir.resolve() / "jobs"
        self._settings = settings
        self._key: str | None = None

    # ------------------------------------------------------------ protocol

    def current_image(self, service: str, *, container: str | None = None) -> str | None:
        status, body = self._call("GET", f"/services/{service}")
        if status == 404:
            return None
        self._raise_for(status, body)
        image = body.get("image")
        return str(image) if image is not None else None

    def rollout(self, request: RolloutRequest, progress: Progress) -> RolloutResult:
        """Start (or resume) the rollout on the runtime and follow it to its end.

        Raises:
            Invalid: the service is not declared, its command does not exist, its front
                port is taken by another process.
            RolloutFailed: not ready within the progress deadline, or crashing at start;
                the runtime removed the new instances and the old ones kept serving.
            RolloutCancelled: the run was cancelled; the rollout was aborted the same way.
            Transient: the runtime is unreachable (retryable; resuming is safe).
        """
        began = time.monotonic()
        spec = self.service_spec(request)
        resume = progress.resume or {}
        rollout_id = str(resume.get("rollout_id") or rollout_key(request))
        body = {
            "spec": spec.model_dump(mode="json"),
            "image": request.image,
            "rollout_id": rollout_id,
        }
        status, answer = self._call("PUT", f"/services/{request.service}/rollout", json=body)
        self._raise_for(status, answer)
        path = f"/services/{request.service}/rollouts/{rollout_id}"
        unreachable_since: float | None = None
        while answer.get("state") == "running":
            progress.beat(_details(answer))
            if progress.cancelled():
                return self._abort(request, path, progress)
            time.sleep(POLL_S)
            try:
                status, answer = self._call("GET", path)
                unreachable_since = None
            except Transient:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                    raise
                continue
            self._raise_for(status, answer)
        progress.beat(_details(answer))
        if answer["state"] != "succeeded":
            raise RolloutFailed(
                f"rollout of {request.service!r} to {request.image!r} {answer['state']}: "
                + rollout_reason(request.service, request.image, str(answer.get("error")))
            )
        return RolloutResult(
            service=request.service,
            image=request.image,
            previous_image=answer.get("previous_image"),
            instances=[
                {k: i[k] for k in ("id", "image", "pid", "port", "ready")}
                for i in answer.get("instances", [])
                if i.get("image") == request.image and i.get("state") != "stopping"
            ],
            duration_s=time.monotonic() - began,
        )

    def run_job(self, request: JobRequest, progress: Progress) -> JobResult:
        return run_local_job(request, progress, self.jobs_dir)

    # ------------------------------------------------------------ helpers

    def service_spec(self, request: RolloutRequest) -> LocalService:
        """The declared service, with the step's probes and progress deadline on top.

        Raises:
            Invalid: the flow's `target.services` does not declare `request.service`.
        """
        declared = self.spec.services.get(request.service)
        if declared is None:
            names = ", ".join(sorted(self.spec.services)) or "none"
            raise Invalid(
                f"service {request.service!r} is not declared in target.services "
                f"(declared: {names})"
            )
        update: dict[str, Any] = {}
        if _has_env_ref(declared.env) or _has_env_ref(declared.command):
            # `${env.X}` stays a reference in the Plan and in Temporal; the value is read
            # here, on the worker, and only travels to the runtime over loopback.
            update["env"] = {k: resolve_env(v) for k, v in declared.env.items()}
            update["command"] = [resolve_env(part) for part in declared.command]
        if request.probes is not None:
            update["probes"] = merge_probes(declared.probes, request.probes)
        if request.progress_deadline_s is not None:
            update["progress_deadline"] = request.progress_deadline_s
        if not update:
            return declared
        return LocalService.model_validate({**declared.model_dump(), **update})

    def _abort(self, request: RolloutRequest, path: str, progress: Progress) -> RolloutResult:
        status, answer = self._call("POST", path + "/abort")
        self._raise_for(status, answer)
        deadline = time.monotonic() + ABORT_WAIT_S
        while answer.get("state") == "running" and time.monotonic() < deadline:
            progress.beat(_details(answer))
            time.sleep(POLL_S)
            status, answer = self._call("GET", path)
            self._raise_for(status, answer)
        raise RolloutCancelled(
            f"rollout of {request.service!r} to {request.image!r} was cancelled: "
            + rollout_reason(request.service, request.image, str(answer.get("error") or "aborting"))
        )

    def _call(self, method: str, path: str, json: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            # Read when first needed: the runtime may write its key file after this target
            # was built. Kept for the target's life (one activity).
            self._key = self._key or client_key(self._settings)
        except RuntimeKeyError as e:
            raise TargetError(str(e), retryable=False) from None
        headers = auth_headers(self._key)
        try:
            # One connection per call: the runtime answers with `Connection: close`, and a
            # target built per activity leaves no pooled connection behind.
            response = httpx.request(
                method, self.url + path, json=json, headers=headers, timeout=self._timeout
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
        return response.status_code, data if isinstance(data, dict) else {"items": data}

    @staticmethod
    def _raise_for(status: int, body: dict[str, Any]) -> None:
        if status < 400:
            return
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


def _has_env_ref(values: dict[str, str] | list[str]) -> bool:
    items = values.values() if isinstance(values, dict) else values
    return any("${" in item for item in items)


def merge_probes(service: Probes, step: Probes) -> Probes:
    """Probes a deploy step sets replace the service's probe of the same kind."""
    return Probes(
        readiness=step.readiness or service.readiness,
        liveness=step.liveness or service.liveness,
        startup=step.startup or service.startup,
    )


def rollout_key(request: RolloutRequest) -> str:
    """A rollout id that every attempt of the same step computes alike."""
    raw = f"{request.run_id}/{request.step_id}/{request.service}/{request.image}"
    return "ro-" + hashlib.sha256(raw.encode()).hexdigest()[:20]


def _details(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "rollout_id": answer.get("rollout_id"),
        "updated": answer.get("updated", 0),
        "ready": answer.get("ready", 0),
        "total": answer.get("total", 0),
    }


_INSTANCE_URL = re.compile(r"(?:http GET )?https?://(?:127\.0\.0\.1|localhost):\d+(?P<path>/[^\s:]*)?")
_INSTANCE_TCP = re.compile(r"tcp (?:127\.0\.0\.1|localhost):\d+")
_INSTANCE_PORT = re.compile(r"\bport \d+ does not accept")


def rollout_reason(service: str, image: str, error: str) -> str:
    """The runtime's reason for a failed rollout, as a user reads it after `rollout of S to I`.

    The runtime names the service and image again and the instance's own port (one it
    picked, behind the front port): both are noise to the user, and the port is an
    internal detail. `GET http://127.0.0.1:41523/healthz` becomes `GET /healthz on a new
    instance`.
    """
    text = error
    for repeat in (f"{service!r} {image!r}: ", f"{service!r} {image!r} "):
        if text.startswith(repeat):
            text = text[len(repeat) :]
    text = _INSTANCE_URL.sub(lambda m: f"GET {m.group('path') or '/'} on a new instance", text)
    text = _INSTANCE_TCP.sub("tcp on a new instance", text)
    return _INSTANCE_PORT.sub("a new instance does not accept", text)
