"""The `local` target: services as processes on this machine, run by the local runtime.

The target itself holds no state: it translates the Target protocol into calls to the
runtime's loopback HTTP API (through `runtime_client`; the runtime itself is
`shipflow.worker.runtime`, a process of its own) and follows a
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

from shipflow.activities.analysis.envrefs import resolve_analysis_env
from shipflow.activities.core.settings import Settings
from shipflow.activities.envrefs import resolve_env, secret_values
from shipflow.activities.targets.base import (
    Invalid,
    JobRequest,
    JobResult,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    TargetError,
    Transient,
)
from shipflow.activities.targets.local.jobdirs import redacted_values
from shipflow.activities.targets.local.jobs import run_local_job
from shipflow.activities.targets.local.runtime_client import RolloutBody, RolloutView, RuntimeClient
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
        self.client = RuntimeClient(self.url, settings)
        self.jobs_dir = settings.data_dir.resolve() / "jobs"

    # ------------------------------------------------------------ protocol

    def current_image(self, service: str, *, container: str | None = None) -> str | None:
        found = self.client.service(service)
        return found.image if found is not None else None

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
        body = RolloutBody(
            spec=spec, image=request.image, rollout_id=rollout_id, run_id=request.run_id,
            step_id=request.step_id, redact=self.masked_values(request),
        )
        answer = self.client.put_rollout(request.service, body)
        unreachable_since: float | None = None
        while answer.state == "running":
            progress.beat(_details(answer))
            if progress.cancelled():
                return self._abort(request, rollout_id, progress)
            time.sleep(POLL_S)
            try:
                answer = self.client.rollout(request.service, rollout_id)
                unreachable_since = None
            except Transient:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                    raise
                continue
        progress.beat(_details(answer))
        if answer.state != "succeeded":
            raise RolloutFailed(
                f"rollout of {request.service!r} to {request.image!r} {answer.state}: "
                + rollout_reason(request.service, request.image, str(answer.error))
            )
        return RolloutResult(
            service=request.service,
            image=request.image,
            previous_image=answer.previous_image,
            instances=[
                {"id": i.id, "image": i.image, "pid": i.pid, "port": i.port, "ready": i.ready}
                for i in answer.instances
                if i.image == request.image and i.state != "stopping"
            ],
            duration_s=time.monotonic() - began,
            strategy=answer.strategy,
            rounds=answer.rounds,
            downtime_s=answer.downtime_s,
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
        if request.env:
            # Group values under the flow's own `env:` (the author's explicit word wins).
            update["env"] = {**request.env, **update.get("env", declared.env)}
        if request.probes is not None:
            update["probes"] = merge_probes(declared.probes, request.probes)
        if request.progress_deadline_s is not None:
            update["progress_deadline"] = request.progress_deadline_s
        strategy = request.strategy or declared.strategy
        bg = strategy.blue_green if strategy is not None else None
        if bg is not None and (bg.active_service or bg.preview_service):
            field = "active_service" if bg.active_service else "preview_service"
            raise Invalid(
                f"strategy.blue_green.{field} names a Kubernetes Service; on the local target "
                "the switch is at the front port and the preview is preview_port"
            )
        if strategy is not None and (request.strategy is not None or "${" in strategy.model_dump_json()):
            update["strategy"] = resolve_analysis_env(strategy)
        if not update:
            return declared
        return LocalService.model_validate({**declared.model_dump(), **update})

    def masked_values(self, request: RolloutRequest) -> list[str]:
        """The secret values the service is given: those of its secret groups and the values
        of the `${env.X}` its env and command refer to. The runtime masks them in the
        instance logs, as the supervisor of a local job does in the job's output."""
        declared = self.spec.services.get(request.service)
        refs = secret_values([declared.env, declared.command]) if declared is not None else []
        return redacted_values(request.redact + refs)

    def _abort(self, request: RolloutRequest, rollout_id: str, progress: Progress) -> RolloutResult:
        answer = self.client.abort(request.service, rollout_id)
        deadline = time.monotonic() + ABORT_WAIT_S
        while answer.state == "running" and time.monotonic() < deadline:
            progress.beat(_details(answer))
            time.sleep(POLL_S)
            answer = self.client.rollout(request.service, rollout_id)
        raise RolloutCancelled(
            f"rollout of {request.service!r} to {request.image!r} was cancelled: "
            + rollout_reason(request.service, request.image, str(answer.error or "aborting"))
        )


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


def _details(answer: RolloutView) -> dict[str, Any]:
    return {
        "rollout_id": answer.rollout_id,
        "updated": answer.updated,
        "ready": answer.ready,
        "total": answer.total,
        **(
            {"weight": answer.weight, "canary_step": answer.step_index, "paused": answer.paused}
            if answer.strategy in ("canary", "blue_green")
            else {}
        ),
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
