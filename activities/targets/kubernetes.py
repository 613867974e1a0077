"""The `kubernetes` target: Deployments rolled out by image patch, migrations as batch/v1 Jobs.

Built on the official `kubernetes` client. The client configuration comes from the
kubeconfig (`KUBECONFIG`, or `~/.kube/config`; context `spec["context"]`) or, inside a
pod, from the service account; one `ApiClient` per (kubeconfig, context) is built on
first use and shared by the targets of every flow that names it. The client's global
default configuration is never touched, so flows on different clusters can run side by
side in one worker.

A rollout is judged by the same rules as `kubectl rollout status`; it is followed with
the watch API (re-listing after each watch window, so a dropped watch loses nothing) and
reported through `Progress.beat`, which is what makes a crashed worker's successor
resume the watch instead of patching the image a second time.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import (
    Conflict,
    Invalid,
    JobFailed,
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
from shipflow.activities.targets.k8s_errors import CONNECTION_ERRORS, Cancelled, api_error, call
from shipflow.workflows.spec import Probe, Probes, Strategy

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
#: Consecutive failed watch requests tolerated before the rollout step fails (retryably).
WATCH_FAILURES = 5

_clients: dict[tuple[str, str | None], client.ApiClient] = {}
_clients_lock = threading.Lock()


def _kubeconfig_path() -> str | None:
    """`KUBECONFIG` as it is now (the client library reads it once, at import), else the default."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.exists() else None


def api_client_for(context: str | None) -> client.ApiClient:
    """The shared ApiClient for a kubeconfig context (None: the current one, or in-cluster).

    Raises:
        Invalid: no kubeconfig and not in a pod, or the context does not exist.
    """
    path = _kubeconfig_path()
    key = (path or "<in-cluster>", context)
    with _clients_lock:
        cached = _clients.get(key)
        if cached is not None:
            return cached
        configuration = client.Configuration()
        try:
            if path is not None:
                config.load_kube_config(
                    config_file=path,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            elif context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                raise config.ConfigException("no kubeconfig found and not running in a cluster")
        except config.ConfigException as e:
            raise Invalid(f"kubernetes configuration (context {context or 'current'}): {e}") from e
        api = client.ApiClient(configuration=configuration)
        _clients[key] = api
        return api


def _seconds(value: Any, *, minimum: int) -> int:
    return max(minimum, math.ceil(value.total_seconds()))


def probe_to_k8s(probe: Probe, *, default_port: int | None) -> dict[str, Any]:
    """Our flow-file probe as a Kubernetes container probe.

    The handlers not used are set to null so that a strategic merge patch replaces a
    previous probe's handler instead of adding a second one (which the API rejects).
    `host` is only passed when the flow set a non-loopback one: in a cluster the kubelet
    probes the pod's IP, and 127.0.0.1 would be the node.

    Raises:
        Invalid: the probe needs a port and neither it nor the container declares one, or
            it accepts status codes Kubernetes cannot (only 200-399 count as success there).
    """
    out: dict[str, Any] = {"httpGet": None, "tcpSocket": None, "exec": None, "grpc": None}
    if probe.http is not None:
        port = probe.http.port or default_port
        if port is None:
            raise Invalid("an http probe needs a port: the container declares no containerPort")
        if any(not 200 <= code <= 399 for code in probe.http.status):
            raise Invalid("kubernetes http probes only accept status codes 200-399")
        http: dict[str, Any] = {"path": probe.http.path, "port": port, "scheme": probe.http.scheme.upper()}
        if probe.http.host not in ("127.0.0.1", "localhost"):
            http["host"] = probe.http.host
        if probe.http.headers:
            http["httpHeaders"] = [{"name": k, "value": v} for k, v in probe.http.headers.items()]
        out["httpGet"] = http
    elif probe.tcp is not None:
        port = probe.tcp.port or default_port
        if port is None:
            raise Invalid("a tcp probe needs a port: the container declares no containerPort")
        tcp: dict[str, Any] = {"port": port}
        if probe.tcp.host not in ("127.0.0.1", "localhost"):
            tcp["host"] = probe.tcp.host
        out["tcpSocket"] = tcp
    elif probe.exec is not None:
        out["exec"] = {"command": list(probe.exec.command)}
    out.update(
        initialDelaySeconds=_seconds(probe.initial_delay, minimum=0),
        periodSeconds=_seconds(probe.period, minimum=1),
        timeoutSeconds=_seconds(probe.timeout, minimum=1),
        successThreshold=probe.success_threshold,
        failureThreshold=probe.failure_threshold,
    )
    return out


def probes_to_k8s(probes: Probes, *, default_port: int | None) -> dict[str, Any]:
    """The `readinessProbe`/`livenessProbe`/`startupProbe` fields of a container patch."""
    out: dict[str, Any] = {}
    for ours, theirs in (
        ("readiness", "readinessProbe"),
        ("liveness", "livenessProbe"),
        ("startup", "startupProbe"),
    ):
        probe = getattr(probes, ours)
        if probe is not None:
            out[theirs] = probe_to_k8s(probe, default_port=default_port)
    return out


def label_value(text: str) -> str:
    """`text` made a valid label value: 63 characters of [A-Za-z0-9._-], alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _meta(obj: Any) -> client.V1ObjectMeta:
    """An object's metadata; the API always sends it, the client's types allow None."""
    meta = obj.metadata
    return meta if meta is not None else client.V1ObjectMeta()


def rollout_status(dep: client.V1Deployment) -> tuple[str, str]:
    """Where a rollout stands, by the rules of `kubectl rollout status`.

    Returns:
        (`done` | `waiting` | `failed`, a human sentence).
    """
    meta = _meta(dep)
    spec = dep.spec
    status = dep.status or client.V1DeploymentStatus()
    generation = meta.generation or 0
    if generation > (status.observed_generation or 0):
        return "waiting", "waiting for the deployment spec update to be observed"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return "failed", f"deployment {meta.name!r} exceeded its progress deadline"
    wanted = spec.replicas if spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    available = status.available_replicas or 0
    if updated < wanted:
        return "waiting", f"{updated} out of {wanted} new replicas have been updated"
    if total > updated:
        return "waiting", f"{total - updated} old replicas are pending termination"
    if available < updated:
        return "waiting", f"{available} of {updated} updated replicas are available"
    return "done", f"deployment {meta.name!r} successfully rolled out"


def _container(dep: client.V1Deployment, name: str | None) -> client.V1Container:
    pod_spec = dep.spec.template.spec if dep.spec else None
    containers = (pod_spec.containers if pod_spec else None) or []
    if not containers:
        raise Invalid(f"deployment {_meta(dep).name!r} has no containers")
    if name is None:
        return containers[0]
    for item in containers:
        if item.name == name:
            return item
    names = ", ".join(c.name for c in containers)
    raise Invalid(f"deployment {_meta(dep).name!r} has no container {name!r} (it has: {names})")


class KubernetesTarget:
    """A Kubernetes namespace: services are Deployments, one-off commands are Jobs.

    Args:
        spec: the flow's `target:` section (`namespace`, `context`).
        settings: the worker's settings; the heartbeat timeout bounds how long one watch
            request may stay silent, so cancellation and liveness are noticed in time.
    """

    def __init__(self, spec: dict[str, Any], settings: Settings):
        self.namespace: str = spec.get("namespace") or "default"
        self.context: str | None = spec.get("context")
        self.settings = settings
        self.watch_timeout_s = max(1, min(5, int(settings.heartbeat_timeout_s / 4)))
        self._api: client.ApiClient | None = None

    # ------------------------------------------------------------ clients

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = api_client_for(self.context)
        return self._api

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def _read_deployment(self, name: str) -> client.V1Deployment:
        return call(
            self.apps.read_namespaced_deployment,
            name,
            self.namespace,
            verb="get",
            kind="deployments",
            name=name,
            namespace=self.namespace,
        )

    # ------------------------------------------------------------ Target protocol

    def current_image(self, service: str, *, container: str | None = None) -> str | None:
        """The image of the Deployment's container (the first one by default).

        None when there is no such Deployment: shipflow rolls existing Deployments out
        and does not create them, so `rollout` then fails with NotFound.
        """
        try:
            dep = self._read_deployment(service)
        except NotFound:
            return None
        return _container(dep, container).image

    def rollout(self, request: RolloutRequest, progress: Progress) -> RolloutResult:
        """Patch the Deployment's image (and probes), then follow the rollout to its end.

        On a later attempt of the same step (`progress.resume`) the Deployment usually
        has the new image already; it is then not patched again, the watch resumes.
        Canary and blue-green are run by `k8s_progressive` (extra Deployment and Service).

        Raises:
            RolloutFailed: the Deployment reported ProgressDeadlineExceeded; its container
                was set back to the previous image (and probes).
            Cancelled: the run asked the step to stop; the container was set back too.
            TargetError: the API refused or failed (mapped in `k8s_errors`).
        """
        if request.strategy is not None and request.strategy.kind in ("canary", "blue_green"):
            from shipflow.activities.targets.k8s_progressive import progressive_rollout

            return progressive_rollout(self, request, progress)
        started = time.monotonic()
        name = request.service
        dep = self._read_deployment(name)
        current = _container(dep, request.container)
        container = current.name
        resume = progress.resume or {}
        previous = resume.get("previous_image", current.image) if resume else current.image
        details: dict[str, Any] = {
            "phase": "patching",
            "image": request.image,
            "previous_image": previous,
        }
        restore: dict[str, Any] = {"name": container, "image": previous}
        # Secret/config groups: referenced with envFrom (`k8s_groups`); a new version alone
        # changes the template, a real rollout.
        env_from = k8s_groups.wanted_env_from(current.env_from, request.group_sources)
        if env_from is not None:
            running = k8s_groups.plain(current.env_from)
            restore["envFrom"] = details["previous_env_from"] = (
                resume.get("previous_env_from", running) if resume else running
            )
        if current.image != request.image or (request.probes is not None and not resume) or (
            env_from is not None and env_from != k8s_groups.plain(current.env_from)
        ):
            progress.beat(details)
            self._groups().materialise(request.group_sources)
            self._patch(dep, container, request, env_from)
            if request.probes is not None:
                restore.update(self._probes_before(current, request.probes))
        elif resume:
            log.info("deployments/%s already runs %s: resuming the watch", name, request.image)
        details["phase"] = "watching"
        try:
            final = self._watch_rollout(name, container, request.image, progress, details)
        except (RolloutFailed, Cancelled) as e:
            # The contract of RolloutFailed: the old version keeps serving. Kubernetes
            # leaves the stuck template in place, so put the previous one back; the same
            # on cancellation, because the run's compensation only undoes steps that
            # finished, and this one did not.
            if previous and previous != request.image:
                self._restore(name, restore)
                raise type(e)(f"{e}; deployments/{name} was set back to {previous}") from None
            raise
        if env_from is not None:
            self._groups().collect()
        status = final.status or client.V1DeploymentStatus()
        return RolloutResult(
            service=name,
            image=request.image,
            previous_image=previous,
            instances=[
                {
                    "replicas": status.replicas or 0,
                    "updated": status.updated_replicas or 0,
                    "ready": status.ready_replicas or 0,
                }
            ],
            duration_s=round(time.monotonic() - started, 3),
        )

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
            labels = _meta(existing).labels or {}
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

    # ------------------------------------------------------------ rollout internals

    def _groups(self) -> k8s_groups.GroupObjects:
        return k8s_groups.GroupObjects(self.api, self.namespace)

    def _patch(
        self,
        dep: client.V1Deployment,
        container: str,
        request: RolloutRequest,
        env_from: list[dict[str, Any]] | None = None,
    ) -> None:
        """One strategic merge patch: the container's image, its probes, the deadline."""
        entry: dict[str, Any] = {"name": container, "image": request.image}
        if env_from is not None:
            entry["envFrom"] = env_from
        if request.probes is not None:
            ports = _container(dep, container).ports or []
            default_port = ports[0].container_port if ports else None
            entry.update(probes_to_k8s(request.probes, default_port=default_port))
        spec: dict[str, Any] = {"template": {"spec": {"containers": [entry]}}}
        if request.progress_deadline_s:
            spec["progressDeadlineSeconds"] = max(1, math.ceil(request.progress_deadline_s))
        if request.strategy is not None:
            spec["strategy"] = strategy_to_k8s(request.strategy)
        call(
            self.apps.patch_namespaced_deployment,
            request.service,
            self.namespace,
            {"spec": spec},
            _content_type="application/strategic-merge-patch+json",
            verb="patch",
            kind="deployments",
            name=request.service,
            namespace=self.namespace,
        )

    def _probes_before(self, container: client.V1Container, probes: Probes) -> dict[str, Any]:
        """The container's probes as they were, for the fields a rollout changes."""
        out: dict[str, Any] = {}
        for ours, theirs, attr in (
            ("readiness", "readinessProbe", "readiness_probe"),
            ("liveness", "livenessProbe", "liveness_probe"),
            ("startup", "startupProbe", "startup_probe"),
        ):
            if getattr(probes, ours) is None:
                continue
            before = getattr(container, attr)
            out[theirs] = (
                {"$patch": "replace", **self.api.sanitize_for_serialization(before)}
                if before is not None
                else None
            )
        return out

    def _restore(self, name: str, container: dict[str, Any]) -> None:
        """Patch a container back after a failed rollout (image, and probes if changed)."""
        call(
            self.apps.patch_namespaced_deployment,
            name,
            self.namespace,
            {"spec": {"template": {"spec": {"containers": [container]}}}},
            _content_type="application/strategic-merge-patch+json",
            verb="patch",
            kind="deployments",
            name=name,
            namespace=self.namespace,
        )

    def _check(
        self, dep: client.V1Deployment, container: str, image: str, details: dict[str, Any],
        progress: Progress,
    ) -> bool:
        """Report where the rollout stands; True when done, raise when it failed."""
        running = _container(dep, container).image
        if running != image:
            raise Conflict(
                f"deployments/{_meta(dep).name} in namespace {self.namespace} was changed to "
                f"{running} by someone else during the rollout to {image}",
                retryable=False,
            )
        status = dep.status or client.V1DeploymentStatus()
        details.update(
            generation=_meta(dep).generation or 0,
            updated=status.updated_replicas or 0,
            ready=status.ready_replicas or 0,
            available=status.available_replicas or 0,
            total=dep.spec.replicas if dep.spec.replicas is not None else 1,
        )
        state, message = rollout_status(dep)
        details["message"] = message
        progress.beat(dict(details))
        if state == "failed":
            raise RolloutFailed(f"rollout of {image} failed: {message}")
        return state == "done"

    def _watch_rollout(
        self, name: str, container: str, image: str, progress: Progress, details: dict[str, Any]
    ) -> client.V1Deployment:
        selector = f"metadata.name={name}"
        failures = 0
        while True:
            if progress.cancelled():
                raise Cancelled(f"rollout of deployments/{name} to {image} cancelled")
            listed = call(
                self.apps.list_namespaced_deployment,
                self.namespace,
                field_selector=selector,
                verb="list",
                kind="deployments",
                name=name,
                namespace=self.namespace,
            )
            if not listed.items:
                raise api_error(
                    ApiException(status=404, reason="deleted during the rollout"),
                    verb="watch", kind="deployments", name=name, namespace=self.namespace,
                )
            dep = listed.items[0]
            if self._check(dep, container, image, details, progress):
                return dep
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.apps.list_namespaced_deployment,
                    self.namespace,
                    field_selector=selector,
                    resource_version=listed.metadata.resource_version if listed.metadata else None,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=self.watch_timeout_s + 5,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        dep = event["object"]
                        if self._check(dep, container, image, details, progress):
                            return dep
                    elif event["type"] == "DELETED":
                        break
                    if progress.cancelled():
                        break
                failures = 0
            except ApiException as e:
                error = api_error(e, verb="watch", kind="deployments", name=name, namespace=self.namespace)
                if not error.retryable:
                    raise error from e
                failures = self._watch_failed(error, failures)
            except CONNECTION_ERRORS as e:
                error = api_error(e, verb="watch", kind="deployments", name=name, namespace=self.namespace)
                failures = self._watch_failed(error, failures)
            finally:
                watcher.stop()

    @staticmethod
    def _watch_failed(error: TargetError, failures: int) -> int:
        """A watch request failed: fall back to re-listing, a few times in a row at most."""
        failures += 1
        if failures >= WATCH_FAILURES:
            raise Transient(f"{error} ({failures} watch failures in a row)") from error
        log.info("watch failed (%s); re-listing", error)
        time.sleep(0.1 * failures)
        return failures

    # ------------------------------------------------------------ job internals

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
                "annotations": {"shipflow/run-id": request.run_id, "shipflow/step-id": request.step_id},
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
        pod = max(pods, key=lambda p: (str(_meta(p).creation_timestamp or ""), _meta(p).name or ""))
        pod_name = _meta(pod).name or ""
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


__all__ = ["KubernetesTarget", "api_client_for", "probe_to_k8s", "rollout_status"]


def strategy_to_k8s(strategy: Strategy) -> dict[str, Any]:
    """A Deployment's `spec.strategy` (strategic merge patch) for a flow's strategy.

    Counts and percentages go as written (Kubernetes' IntOrString, rounded by the
    controller). Recreate must not keep a `rollingUpdate` (the API refuses it), so the
    patch removes it.
    """
    if strategy.canary is not None or strategy.blue_green is not None:
        raise Invalid(f"strategy {strategy.kind} is not a Deployment strategy (k8s_progressive runs it)")
    if strategy.rolling is not None:
        return {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": strategy.rolling.max_surge,
                "maxUnavailable": strategy.rolling.max_unavailable,
            },
        }
    return {"type": "Recreate", "rollingUpdate": None}
