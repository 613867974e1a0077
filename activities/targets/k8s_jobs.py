"""One-off commands (migrations, undo commands) as batch/v1 Jobs: created once per run and
step (a later attempt adopts the Job), followed to completion, their log tail kept."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from kubernetes import client

from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import (
    Conflict,
    Invalid,
    JobFailed,
    JobRequest,
    JobResult,
    Progress,
    TargetError,
)
from shipflow.activities.targets.k8s_client import NamespaceClients
from shipflow.activities.targets.k8s_errors import Cancelled, call
from shipflow.activities.targets.k8s_fields import label_value, meta_of

log = logging.getLogger(__name__)

#: Lines of a Job pod's log kept as the step's output.
LOG_TAIL_LINES = 50
LOG_TAIL_CHARS = 4000
#: The container name of the Jobs shipflow creates.
JOB_CONTAINER = "job"
#: Finished Jobs left behind (failed ones, kept for inspection) are collected after a day.
JOB_TTL_S = 86400
#: Longest pause between two looks at a running Job.
JOB_POLL_MAX_S = 2.0


class JobRunner(NamespaceClients):
    """`run_job`: a command as a Job in the target's namespace."""

    def run_job(self, request: JobRequest, progress: Progress) -> JobResult:
        """Run the command as a batch/v1 Job and wait for it to complete or fail.

        The Job is named after the request (unique per run and step), so a later attempt
        finds the Job of an earlier one (409 on create) and adopts it instead of running
        the command twice. A Job that succeeded is deleted (its pods in the background);
        a failed one is left for `kubectl describe`/`logs` and collected by its TTL.

        Raises:
            JobFailed: the Job failed; Kubernetes already retried it `backoffLimit` times.
            Cancelled: the run asked the step to stop; the Job was deleted.
            TargetError: the Job could not be created or followed.
        """
        started = time.monotonic()
        if not request.image:
            raise Invalid("a kubernetes job needs an image (set `image:` on the step)")
        name = request.name
        run_label = label_value(request.run_id)
        body = self._job_body(request, run_label)
        self._groups().materialise(request.group_sources)
        try:
            call(
                self.batch.create_namespaced_job,
                self.namespace,
                body,
                verb="create",
                kind="jobs",
                name=name,
                namespace=self.namespace,
                retry_conflicts=False,
            )
        except Conflict:
            existing = self._read_job(name)
            labels = meta_of(existing).labels or {}
            if labels.get("shipflow/run") != run_label:
                raise Conflict(
                    f"jobs/{name} in namespace {self.namespace} exists and belongs to another run",
                    retryable=False,
                ) from None
            log.info("jobs/%s exists from an earlier attempt: adopting it", name)
        while True:
            if progress.cancelled():
                self._delete_job(name)
                raise Cancelled(f"job {name} cancelled; the job was deleted")
            job = self._read_job(name)
            st = job.status or client.V1JobStatus()
            progress.beat(
                {
                    "job": name,
                    "active": st.active or 0,
                    "succeeded": st.succeeded or 0,
                    "failed": st.failed or 0,
                }
            )
            conditions = {c.type: c for c in st.conditions or [] if c.status == "True"}
            if "Complete" in conditions:
                output, _ = self._job_log(name)
                self._delete_job(name)
                return JobResult(
                    exit_code=0, output=output, duration_s=round(time.monotonic() - started, 3)
                )
            if "Failed" in conditions:
                condition = conditions["Failed"]
                output, exit_code = self._job_log(name)
                reason = condition.reason or "Failed"
                detail = f": {condition.message}" if condition.message else ""
                last = [line for line in output.splitlines() if line.strip()][-3:]
                said = (": " + " | ".join(last))[-300:] if last else ""
                raise JobFailed(
                    f"job {name} failed ({reason}{detail}), exit code {exit_code}{said}",
                    exit_code=exit_code,
                    output=output,
                    retryable=False,
                )
            # Look again after a tenth of the time it has run so far: short jobs are
            # seen finishing at once, long ones cost few requests (no watch on jobs is
            # needed, which keeps the worker's Role smaller).
            time.sleep(min(JOB_POLL_MAX_S, 0.1 + (time.monotonic() - started) / 10))

    def _job_body(self, request: JobRequest, run_label: str) -> dict[str, Any]:
        labels = {
            "app.kubernetes.io/managed-by": "shipflow",
            "shipflow/run": run_label,
            "shipflow/step": label_value(request.step_id),
        }
        container: dict[str, Any] = {
            "name": JOB_CONTAINER,
            "image": request.image,
            "command": list(request.command),
        }
        if request.env:
            container["env"] = [{"name": k, "value": v} for k, v in request.env.items()]
        if request.group_sources:
            container["envFrom"] = k8s_groups.env_from(request.group_sources)
        if request.cwd:
            container["workingDir"] = request.cwd
        pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if request.service_account:
            pod_spec["serviceAccountName"] = request.service_account
        spec: dict[str, Any] = {
            "backoffLimit": request.retries,
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }
        if request.timeout_s:
            spec["activeDeadlineSeconds"] = max(1, math.ceil(request.timeout_s))
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": request.name,
                "labels": labels,
                "annotations": {
                    "shipflow/run-id": request.run_id,
                    "shipflow/step-id": request.step_id,
                },
            },
            "spec": spec,
        }

    def _read_job(self, name: str) -> client.V1Job:
        return call(
            self.batch.read_namespaced_job,
            name,
            self.namespace,
            verb="get",
            kind="jobs",
            name=name,
            namespace=self.namespace,
        )

    def _delete_job(self, name: str) -> None:
        """Delete the Job and, in the background, its pods; already gone is fine."""
        try:
            call(
                self.batch.delete_namespaced_job,
                name,
                self.namespace,
                body=client.V1DeleteOptions(propagation_policy="Background"),
                verb="delete",
                kind="jobs",
                name=name,
                namespace=self.namespace,
            )
        except TargetError as e:
            if "not found" not in str(e):
                raise

    def _job_log(self, name: str) -> tuple[str, int | None]:
        """The tail of the log of the Job's last pod, and that pod's exit code.

        A log that cannot be read does not decide the step: the Job's condition does.
        """
        try:
            pods = call(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"job-name={name}",
                verb="list",
                kind="pods",
                name=None,
                namespace=self.namespace,
            ).items
        except TargetError as e:
            return f"(log unavailable: {e})", None
        if not pods:
            return "(no pod left to read the log from)", None
        pod = max(
            pods, key=lambda p: (str(meta_of(p).creation_timestamp or ""), meta_of(p).name or "")
        )
        pod_name = meta_of(pod).name or ""
        exit_code: int | None = None
        statuses = (pod.status.container_statuses or []) if pod.status else []
        for cs in sorted(statuses, key=lambda c: c.name != JOB_CONTAINER):
            if cs.state and cs.state.terminated:
                exit_code = cs.state.terminated.exit_code
                break
        try:
            # unparsed: the client would turn a log that looks like JSON into a dict repr
            resp: Any = call(
                self.core.read_namespaced_pod_log,
                pod_name,
                self.namespace,
                tail_lines=LOG_TAIL_LINES,
                _preload_content=False,
                verb="get",
                kind="pods/log",
                name=pod_name,
                namespace=self.namespace,
            )
            text = resp.data.decode("utf-8", errors="replace")
        except TargetError as e:
            text = f"(log unavailable: {e})"
        return text[-LOG_TAIL_CHARS:], exit_code
