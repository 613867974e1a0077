"""A Kubernetes API emulator on loopback: enough of the API for the kubernetes target.

No API server can run on the machines shipflow is built on, so the target's tests talk
to this: real HTTP, the official client, the API's own JSON shapes (objects, lists,
watch events, `Status` errors), and a simulated controller that moves Deployments and
Jobs forward one tick at a time:

- Deployments (apps/v1): GET, LIST (fieldSelector, labelSelector), WATCH (`?watch=1`,
  newline-delimited JSON events, resourceVersion, timeoutSeconds), POST, PATCH
  (strategic merge and JSON merge patch), DELETE, and the `status` subresource. A spec
  change bumps `metadata.generation`; the controller observes it on the next tick and
  rolls the pods over one replica per tick (surge one, wait ready, retire one old).
  Images `never_ready(image)` says yes to never get ready, so the Progressing condition
  turns `ProgressDeadlineExceeded` after `spec.progressDeadlineSeconds`.
- Jobs (batch/v1): POST, GET, LIST, WATCH, DELETE (propagationPolicy). A Job gets a pod,
  which after a delay succeeds or fails (`job_outcome`), with a log; failed pods are
  retried up to `backoffLimit`; `activeDeadlineSeconds` is enforced.
- Pods (v1): GET, LIST, WATCH, and `pods/{name}/log` (tailLines).
- Secrets and ConfigMaps (v1): POST, GET, LIST (labelSelector), DELETE; a Secret's
  `stringData` is stored base64 in `data`, as the API server does.
- ReplicaSets (apps/v1): GET, LIST. The controller makes one per Deployment template and
  deletes the oldest beyond `revisionHistoryLimit` (default 10).
- Services (v1): GET, LIST, POST, PATCH (a selector patch switches traffic), DELETE; the
  API's validation of `spec.ports` and `spec.selector`. No endpoints are simulated.
- Deployments are validated as the API does: `spec.selector` must match the template's
  labels, and is immutable after creation.
- HorizontalPodAutoscalers (autoscaling/v2): POST, GET, LIST, PATCH, DELETE, validated as
  the API does (`scaleTargetRef`, `maxReplicas`, `minReplicas` defaulted to 1). Their
  controller has no metrics: it keeps its target Deployment's `spec.replicas` within
  [minReplicas, maxReplicas], or at `hpa_wants[(namespace, name)]` when a test sets that
  (load), and reports `currentReplicas`/`desiredReplicas` in the status, as the real one.

Test knobs: `fail(verb, path, status, times)` makes the next requests matching a verb
and a path pattern fail with a `Status` body; `patches` records every PATCH; `deletes`
every DELETE; `requests` every request line. `kubeconfig()` writes a kubeconfig that
points the real client here (a bearer token is required, as on a real cluster).

Why one module, over our ~400-line guide: it is the test double of one process, an API
server with its controllers, and every part of it reads and writes the same state under
one condition (`KubeEmulator.cond`): the objects, the resourceVersion counter, the watch
event history, the rollout and Job simulations, the injected faults. The HTTP face
(`_Handler`, watches) and the controller thread both go through `KubeEmulator.handle` and
`_tick`; split across modules they would share private attributes of one class. So a test
imports one thing (`KubeEmulator`) and one file says what the fake does and does not do.
Its order: the API's pure rules first (Status bodies, merge patches, selectors), then the
store and validation, the controllers (`_tick`: Deployments, ReplicaSets, Jobs, pods), and
the HTTP handler last.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

RESOURCES = {
    # plural: (group path, group name, kind)
    "deployments": ("/apis/apps/v1", "apps", "Deployment"),
    "jobs": ("/apis/batch/v1", "batch", "Job"),
    "pods": ("/api/v1", "", "Pod"),
    "secrets": ("/api/v1", "", "Secret"),
    "configmaps": ("/api/v1", "", "ConfigMap"),
    "replicasets": ("/apis/apps/v1", "apps", "ReplicaSet"),
    "services": ("/api/v1", "", "Service"),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", "autoscaling", "HorizontalPodAutoscaler"),
}

_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/apps/v1|/apis/batch/v1|/apis/autoscaling/v2)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>deployments|jobs|pods|secrets|configmaps|replicasets|services|horizontalpodautoscalers)(?:/(?P<name>[^/]+)(?:/(?P<sub>status|log))?)?$"
)

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}

#: Strategic merge patch: the lists merged item by item, and the key of their items.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "conditions": "type",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, message: str, *, reason: str | None = None, details: dict | None = None) -> dict:
    """A Kubernetes `Status` object, as every API error body is."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "details": details or {},
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, message: str, *, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = status_body(code, message, reason=reason, details=details)


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """The subset of Kubernetes' strategic merge patch the Deployment and Job schemas need.

    Lists in `_MERGE_KEYS` merge by their key (`containers` by `name`...), other lists
    replace; `null` deletes a field; `$patch: replace` replaces a map; an item with
    `$patch: delete` removes the matching item from a merged list.
    """
    if isinstance(patch, dict):
        patch = dict(patch)
        directive = patch.pop("$patch", None)
        if directive == "replace":
            return {k: v for k, v in copy.deepcopy(patch).items() if v is not None}
        out = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, value in patch.items():
            if value is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge_patch(out.get(k), value, k)
        return out
    if isinstance(patch, list) and key in _MERGE_KEYS and isinstance(target, list):
        merge_key = _MERGE_KEYS[key]
        out_list = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise ApiError(422, f"{key}: every item of a strategic merge patch needs {merge_key!r}")
            index = next((i for i, cur in enumerate(out_list) if cur.get(merge_key) == item[merge_key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    out_list.pop(index)
            elif index is None:
                out_list.append(strategic_merge_patch({}, item))
            else:
                out_list[index] = strategic_merge_patch(out_list[index], item)
        return out_list
    return copy.deepcopy(patch)


def _resolve_rolling(rolling: dict, replicas: int) -> tuple[int, int]:
    """maxSurge and maxUnavailable as the deployment controller resolves them.

    Percentages of the replicas, surge rounded up and unavailable down; if both end up 0,
    unavailable becomes 1 so that the rollout can progress (`ResolveFenceposts`).
    """

    def value(raw: Any, round_up: bool) -> int:
        if isinstance(raw, str):
            scaled = replicas * int(raw[:-1])
            return -(-scaled // 100) if round_up else scaled // 100
        return int(raw)

    surge = value(rolling.get("maxSurge", "25%"), True)
    unavailable = value(rolling.get("maxUnavailable", "25%"), False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


# ---------------------------------------------------------------- selectors


def _match_selector(selector: str | None, values: dict[str, str], *, exists_ok: bool = True) -> bool:
    """Equality-based selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated."""
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if values.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if values.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in values:
                return False
        elif exists_ok and term not in values:
            return False
    return True


def _fields(obj: dict) -> dict[str, str]:
    meta = obj.get("metadata", {})
    out = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
    if "phase" in obj.get("status", {}):
        out["status.phase"] = obj["status"]["phase"]
    return out


# ---------------------------------------------------------------- the emulator


@dataclass
class Fault:
    verb: str
    path: re.Pattern[str]
    code: int
    remaining: int
    message: str | None = None


@dataclass
class JobOutcome:
    match: Callable[[dict], bool]
    exit_code: int = 0
    log: str | None = None
    duration_s: float | None = None


@dataclass
class _RolloutSim:
    template: str = ""
    old: int = 0
    new: int = 0
    new_ready: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    exceeded: bool = False


@dataclass
class _JobSim:
    started: float = field(default_factory=time.monotonic)
    pod: str | None = None
    pod_started: float = 0.0
    finished: bool = False


class KubeEmulator:
    """The emulator. `start()` serves on 127.0.0.1 (a free port) with a ticking controller.

    Args:
        tick_s: how often the simulated controllers move (one replica per tick).
        job_duration_s: how long a Job's pod runs unless an outcome says otherwise.
        history: watch events kept; a watch from an older resourceVersion gets 410 Gone.
    """

    def __init__(self, *, tick_s: float = 0.05, job_duration_s: float = 0.2, history: int = 2000):
        self.tick_s = tick_s
        self.job_duration_s = job_duration_s
        self.history = history
        self.token = secrets.token_hex(16)
        self.cond = threading.Condition()
        self.rv = 1
        self.objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self.events: list[tuple[int, str, str, dict]] = []
        self.patches: list[dict[str, Any]] = []
        self.deletes: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.never_ready: Callable[[str], bool] = lambda image: False
        #: The size an autoscaler wants for its target (as if from metrics), by (namespace, HPA name).
        self.hpa_wants: dict[tuple[str, str], int] = {}
        self.outcomes: list[JobOutcome] = []
        self.logs: dict[tuple[str, str], str] = {}
        self._rollouts: dict[tuple[str, str], _RolloutSim] = {}
        self._jobs: dict[tuple[str, str], _JobSim] = {}
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> KubeEmulator:
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kube-emulator-http", daemon=True),
            threading.Thread(target=self._tick_loop, name="kube-emulator-controller", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, *, context: str = "emulator", namespace: str = "default") -> Path:
        """Write a kubeconfig for this emulator: cluster, token user, and `context`."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "shipflow", "user": {"token": self.token}}],
            "contexts": [
                {"name": context, "context": {"cluster": "emulator", "user": "shipflow", "namespace": namespace}}
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # ------------------------------------------------------------ knobs

    def fail(self, verb: str, path: str, code: int, *, times: int = 1, message: str | None = None) -> None:
        """The next `times` requests with this API verb (get, list, watch, create, patch,
        delete) and a path matching the regex `path` fail with `code`."""
        with self.cond:
            self.faults.append(Fault(verb, re.compile(path), code, times, message))

    def job_outcome(
        self,
        match: str | Callable[[dict], bool],
        *,
        exit_code: int = 0,
        log: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        """How Jobs matching `match` (a name prefix, or a predicate on the Job) end."""
        predicate: Callable[[dict], bool]
        if isinstance(match, str):
            prefix = match
            predicate = lambda job: bool(job["metadata"]["name"].startswith(prefix))  # noqa: E731
        else:
            predicate = match
        with self.cond:
            self.outcomes.insert(0, JobOutcome(predicate, exit_code, log, duration_s))

    def add_deployment(
        self,
        namespace: str,
        name: str,
        image: str,
        *,
        replicas: int = 2,
        container: str | None = None,
        extra_containers: list[dict] | None = None,
        ports: list[int] | None = None,
    ) -> dict:
        """A Deployment that is already fully rolled out, as if it had run for a while."""
        labels = {"app": name}
        main: dict[str, Any] = {"name": container or name, "image": image}
        if ports:
            main["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
        obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [main, *(extra_containers or [])]},
                },
            },
        }
        with self.cond:
            created = self._create("deployments", namespace, obj)
            sim = self._rollouts[(namespace, name)]
            sim.template = json.dumps(created["spec"]["template"], sort_keys=True)
            sim.new = sim.new_ready = replicas
            created["status"] = self._deployment_status(created, sim)
            created["status"]["observedGeneration"] = created["metadata"]["generation"]
            self._emit("deployments", "MODIFIED", created)
            return copy.deepcopy(created)

    def add_hpa(self, namespace: str, name: str, deployment: str, *, min_replicas: int = 1,
                max_replicas: int = 10) -> dict:
        """An autoscaling/v2 HorizontalPodAutoscaler of the Deployment (CPU at 80%)."""
        obj = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
            },
        }
        with self.cond:
            return copy.deepcopy(self._create("horizontalpodautoscalers", namespace, obj))

    def add_service(self, namespace: str, name: str, selector: dict[str, str], *, port: int = 80) -> dict:
        """A ClusterIP Service in front of the pods `selector` picks."""
        obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"selector": dict(selector), "ports": [{"name": "http", "port": port, "targetPort": port}]},
        }
        with self.cond:
            return copy.deepcopy(self._create("services", namespace, obj))

    def get(self, resource: str, namespace: str, name: str) -> Any:
        """A copy of the stored object (as the API would return it), or None."""
        with self.cond:
            obj = self.objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def patches_of(self, namespace: str, name: str, resource: str = "deployments") -> list[dict]:
        with self.cond:
            return [
                p for p in self.patches
                if p["namespace"] == namespace and p["name"] == name and p["resource"] == resource
            ]

    def image_patches(self, namespace: str, name: str) -> list[str]:
        """The images the PATCHes of a Deployment set, in order (what tests count)."""
        out = []
        for p in self.patches_of(namespace, name):
            body = p["body"]
            for c in body.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) or []:
                if isinstance(c, dict) and "image" in c:
                    out.append(c["image"])
        return out

    # ------------------------------------------------------------ storage (hold self.cond)

    def _emit(self, resource: str, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, resource, kind, copy.deepcopy(obj)))
        if len(self.events) > self.history:
            del self.events[: len(self.events) - self.history]
        self.cond.notify_all()

    def _create(self, resource: str, namespace: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        group_path, group, kind = RESOURCES[resource]
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
            meta["name"] = name
        if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            raise ApiError(422, f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}"')
        dotted = f"{resource}.{group}" if group else resource
        if (namespace, name) in self.objects[resource]:
            raise ApiError(
                409, f'{dotted} "{name}" already exists', reason="AlreadyExists",
                details={"name": name, "group": group, "kind": resource},
            )
        obj["apiVersion"] = group_path.removeprefix("/apis/").removeprefix("/api/") if group else "v1"
        obj["kind"] = kind
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=now_rfc3339(),
            generation=1,
        )
        if resource == "deployments":
            self._default_deployment(obj)
            self._rollouts[(namespace, name)] = _RolloutSim()
        elif resource == "jobs":
            self._default_job(obj)
            self._jobs[(namespace, name)] = _JobSim()
        elif resource == "secrets":
            import base64

            # As the API server does: stringData is written into data (base64) and dropped.
            for key, value in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
        elif resource == "services":
            self._default_service(obj)
        elif resource == "horizontalpodautoscalers":
            obj.setdefault("spec", {}).setdefault("minReplicas", 1)
            obj["status"] = {"desiredReplicas": 0}  # the controller fills it on its next pass
        if resource in ("deployments", "jobs", "pods", "replicasets", "services"):
            obj.setdefault("status", {})
        self._validate(resource, obj)
        self.objects[resource][(namespace, name)] = obj
        self._emit(resource, "ADDED", obj)
        return obj

    def _default_deployment(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault(
            "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
        )

    def _default_service(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            spec.setdefault("clusterIP", f"10.96.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))

    def _default_job(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        uid = obj["metadata"]["uid"]
        name = obj["metadata"]["name"]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)

    def _validate(self, resource: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        kind = RESOURCES[resource][2]
        if resource == "services":
            self._validate_service(name, obj.get("spec") or {})
            return
        if resource == "horizontalpodautoscalers":
            self._validate_hpa(name, obj.get("spec") or {})
            return
        if resource == "deployments":
            spec = obj.get("spec", {})
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
            if not selector:
                raise ApiError(422, f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: '
                                    '"null": empty selector is invalid for deployment')
            if any(labels.get(k) != v for k, v in selector.items()):
                raise ApiError(422, f'Deployment.apps "{name}" is invalid: spec.template.metadata.labels: '
                                    f"Invalid value: {_go_map(labels)}: `selector` does not match template `labels`")
        if resource in ("deployments", "jobs"):
            pod_spec = obj.get("spec", {}).get("template", {}).get("spec", {})
            containers = pod_spec.get("containers") or []
            if not containers:
                raise ApiError(
                    422, f'{kind}.{RESOURCES[resource][1]} "{name}" is invalid: '
                    "spec.template.spec.containers: Required value",
                )
            for i, c in enumerate(containers):
                for required in ("name", "image"):
                    if not c.get(required):
                        raise ApiError(
                            422, f'{kind}.{RESOURCES[resource][1]} "{name}" is invalid: '
                            f"spec.template.spec.containers[{i}].{required}: Required value",
                        )
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if c.get(probe, {}).get(h)]
                    if probe in c and len(handlers) != 1:
                        raise ApiError(
                            422, f'{kind}.{RESOURCES[resource][1]} "{name}" is invalid: '
                            f"spec.template.spec.containers[{i}].{probe}: Forbidden: "
                            "may not specify more than 1 handler type",
                        )
            if resource == "deployments":
                self._validate_strategy(name, obj["spec"].get("strategy") or {})
            if resource == "jobs" and pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
                raise ApiError(
                    422, f'Job.batch "{name}" is invalid: spec.template.spec.restartPolicy: '
                    'Required value: valid values: "OnFailure", "Never"',
                )

    def _validate_hpa(self, name: str, spec: dict) -> None:
        """autoscaling/v2 HorizontalPodAutoscaler validation, for the fields of its spec's sizes."""
        prefix = f'HorizontalPodAutoscaler.autoscaling "{name}" is invalid: spec'
        ref = spec.get("scaleTargetRef") or {}
        for required in ("kind", "name"):
            if not ref.get(required):
                raise ApiError(422, f"{prefix}.scaleTargetRef.{required}: Required value")
        high, low = spec.get("maxReplicas"), spec.get("minReplicas", 1)
        if not isinstance(high, int) or isinstance(high, bool):
            raise ApiError(422, f"{prefix}.maxReplicas: Required value")
        if not isinstance(low, int) or low < 1:
            raise ApiError(422, f"{prefix}.minReplicas: Invalid value: {low}: must be greater than or equal to 1")
        if high < low:
            raise ApiError(422, f"{prefix}.maxReplicas: Invalid value: {high}: must be greater than or equal "
                                "to `minReplicas`")

    def _validate_service(self, name: str, spec: dict) -> None:
        """v1 Service validation, for the fields a ClusterIP Service needs."""
        prefix = f'Service "{name}" is invalid: spec'
        kind = spec.get("type", "ClusterIP")
        if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise ApiError(422, f'{prefix}.type: Unsupported value: "{kind}"')
        ports = spec.get("ports") or []
        if kind != "ExternalName" and not ports:
            raise ApiError(422, f"{prefix}.ports: Required value")
        for i, port in enumerate(ports):
            if not isinstance(port.get("port"), int) or not 1 <= port["port"] <= 65535:
                raise ApiError(422, f"{prefix}.ports[{i}].port: Invalid value: {port.get('port')}: must be "
                                    "between 1 and 65535, inclusive")
            if len(ports) > 1 and not port.get("name"):
                raise ApiError(422, f"{prefix}.ports[{i}].name: Required value")
        for value in (spec.get("selector") or {}).values():
            if not isinstance(value, str) or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value) \
                    or len(value) > 63:
                raise ApiError(422, f'{prefix}.selector: Invalid value: "{value}": a valid label must be an '
                                    "empty string or consist of alphanumeric characters, '-', '_' or '.'")

    def _validate_strategy(self, name: str, strategy: dict) -> None:
        """apps/v1 validation of `spec.strategy`, with the API server's messages."""
        prefix = f'Deployment.apps "{name}" is invalid: spec.strategy'
        kind = strategy.get("type", "RollingUpdate")
        if kind not in ("RollingUpdate", "Recreate"):
            raise ApiError(422, f'{prefix}.type: Unsupported value: "{kind}": supported values: '
                                '"Recreate", "RollingUpdate"')
        rolling = strategy.get("rollingUpdate")
        if kind == "Recreate":
            if rolling is not None:
                raise ApiError(422, f"{prefix}.rollingUpdate: Forbidden: may not be specified when "
                                    "strategy `type` is 'Recreate'")
            return
        rolling = rolling or {}
        values = {}
        for field_name in ("maxSurge", "maxUnavailable"):
            value = rolling.get(field_name, "25%")
            if isinstance(value, str) and not re.fullmatch(r"[0-9]+%", value):
                raise ApiError(422, f'{prefix}.rollingUpdate.{field_name}: Invalid value: "{value}": a '
                                    "valid percent string must be a numeric string followed by an ending '%'")
            number = int(value[:-1]) if isinstance(value, str) else int(value)
            if number < 0:
                raise ApiError(422, f"{prefix}.rollingUpdate.{field_name}: Invalid value: {number}: must "
                                    "be greater than or equal to 0")
            values[field_name] = number
        if values["maxSurge"] == 0 and values["maxUnavailable"] == 0:
            raise ApiError(422, f"{prefix}.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 "
                                "when `maxSurge` is 0")

    # ------------------------------------------------------------ the controllers

    def _tick_loop(self) -> None:
        while True:
            with self.cond:
                if self._stopping:
                    return
                self._tick()
                self.cond.wait(self.tick_s)

    def _tick(self) -> None:
        for (ns, name), dep in list(self.objects["deployments"].items()):
            sim = self._rollouts.setdefault((ns, name), _RolloutSim())
            before = copy.deepcopy(dep["status"])
            self._step_deployment(dep, sim)
            if dep["status"] != before:
                self._emit("deployments", "MODIFIED", dep)
        for (ns, name), job in list(self.objects["jobs"].items()):
            jsim = self._jobs.setdefault((ns, name), _JobSim())
            if not jsim.finished:
                self._step_job(ns, job, jsim)
        for (ns, name), hpa in list(self.objects["horizontalpodautoscalers"].items()):
            self._step_hpa(ns, name, hpa)

    def _step_hpa(self, ns: str, name: str, hpa: dict) -> None:
        """The autoscaler's pass: its target Deployment's size into [min, max] (or to what
        `hpa_wants` says), by a scale of `spec.replicas`, as the HPA controller does."""
        spec = hpa["spec"]
        ref = spec["scaleTargetRef"]
        dep = self.objects["deployments"].get((ns, ref["name"])) if ref["kind"] == "Deployment" else None
        if dep is None:
            return
        current = dep["spec"].get("replicas", 1)
        wanted = self.hpa_wants.get((ns, name), current)
        desired = max(spec.get("minReplicas", 1), min(spec["maxReplicas"], wanted))
        status = {**hpa.get("status", {}), "currentReplicas": current, "desiredReplicas": desired}
        if desired != current:
            dep["spec"]["replicas"] = desired
            dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
            self._emit("deployments", "MODIFIED", dep)
            status["lastScaleTime"] = now_rfc3339()
        if status != hpa.get("status"):
            hpa["status"] = status
            self._emit("horizontalpodautoscalers", "MODIFIED", hpa)

    def _step_deployment(self, dep: dict, sim: _RolloutSim) -> None:
        spec, status = dep["spec"], dep["status"]
        now = time.monotonic()
        template = json.dumps(spec["template"], sort_keys=True)
        status["observedGeneration"] = dep["metadata"]["generation"]
        if template != sim.template:
            self._new_replica_set(dep, template)
            sim.old += sim.new_ready
            sim.new = sim.new_ready = 0
            sim.template = template
            sim.last_progress = now
            sim.exceeded = False
        wanted = spec.get("replicas", 1)
        images = [c.get("image", "") for c in spec["template"]["spec"]["containers"]]
        healthy = not any(self.never_ready(image) for image in images)
        before = (sim.old, sim.new, sim.new_ready)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            # Every old pod goes first; the new ones are created only once none is left.
            if sim.old > 0:
                sim.old = 0
            elif sim.new < wanted:
                sim.new = wanted
            elif sim.new_ready < sim.new and healthy:
                sim.new_ready += 1
        else:
            surge, unavailable = _resolve_rolling(strategy.get("rollingUpdate") or {}, wanted)
            if sim.new_ready < sim.new and healthy:
                sim.new_ready += 1  # one new pod becomes ready per tick
            # Scale the old ReplicaSet down as far as availability allows, then the new
            # one up as far as the surge allows (the deployment controller's two steps).
            down = min(sim.old, sim.old + sim.new_ready - (wanted - unavailable))
            if down > 0:
                sim.old -= down
            if sim.new < wanted:
                sim.new += max(0, min(wanted + surge - sim.old - sim.new, wanted - sim.new))
            elif sim.new > wanted:
                sim.new -= 1
                sim.new_ready = min(sim.new_ready, sim.new)
        progressed = (sim.old, sim.new, sim.new_ready) != before
        if progressed:
            sim.last_progress = now
        done = sim.old == 0 and sim.new == wanted and sim.new_ready == wanted
        if not done and now - sim.last_progress > spec.get("progressDeadlineSeconds", 600):
            sim.exceeded = True
        dep["status"] = self._deployment_status(dep, sim, previous=status)

    def _new_replica_set(self, dep: dict, template: str) -> None:
        """The Deployment's ReplicaSet for a new template; the oldest beyond
        `revisionHistoryLimit` (default 10) old ones are deleted, as the controller does."""
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        rs_name = f"{name}-{abs(hash(template)) % 10**10:010d}"[:63]
        if (ns, rs_name) not in self.objects["replicasets"]:
            rs = {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "uid": str(uuid.uuid4()),
                             "creationTimestamp": now_rfc3339(), "labels": {"shipflow-emulator/deployment": name},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                  "uid": dep["metadata"]["uid"]}]},
                "spec": {"replicas": dep["spec"].get("replicas", 1),
                         "selector": copy.deepcopy(dep["spec"].get("selector") or {}),
                         "template": copy.deepcopy(dep["spec"]["template"])},
                "status": {"replicas": 0},
            }
            self.objects["replicasets"][(ns, rs_name)] = rs
            self._emit("replicasets", "ADDED", rs)
        owned = [k for k, r in self.objects["replicasets"].items()
                 if k[0] == ns and r["metadata"]["labels"].get("shipflow-emulator/deployment") == name]
        keep = dep["spec"].get("revisionHistoryLimit", 10) + 1
        for key in owned[: max(0, len(owned) - keep)]:
            gone = self.objects["replicasets"].pop(key)
            self._emit("replicasets", "DELETED", gone)

    def _deployment_status(self, dep: dict, sim: _RolloutSim, previous: dict | None = None) -> dict:
        previous = previous or {}
        wanted = dep["spec"].get("replicas", 1)
        name = dep["metadata"]["name"]
        rs = f"{name}-{abs(hash(sim.template)) % 10**10:010d}"[:63]
        total = sim.old + sim.new
        ready = sim.old + sim.new_ready
        done = sim.old == 0 and sim.new == wanted and sim.new_ready == wanted
        status: dict[str, Any] = {"observedGeneration": previous.get("observedGeneration", 0)}
        for key, value in (
            ("replicas", total),
            ("updatedReplicas", sim.new),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("unavailableReplicas", max(0, total - ready)),
        ):
            if value:  # the API omits zero counts
                status[key] = value
        old_conditions = {c["type"]: c for c in previous.get("conditions", [])}

        def condition(kind: str, state: str, reason: str, message: str) -> dict:
            old = old_conditions.get(kind)
            stamp = now_rfc3339()
            transition = old["lastTransitionTime"] if old and old["status"] == state else stamp
            updated = old["lastUpdateTime"] if old and old["reason"] == reason else stamp
            return {
                "type": kind, "status": state, "lastUpdateTime": updated,
                "lastTransitionTime": transition, "reason": reason, "message": message,
            }

        available = ready >= wanted
        conditions = [
            condition(
                "Available",
                "True" if available else "False",
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability." if available
                else "Deployment does not have minimum availability.",
            )
        ]
        if sim.exceeded:
            conditions.append(
                condition("Progressing", "False", "ProgressDeadlineExceeded",
                          f'ReplicaSet "{rs}" has timed out progressing.')
            )
        elif done:
            conditions.append(
                condition("Progressing", "True", "NewReplicaSetAvailable",
                          f'ReplicaSet "{rs}" has successfully progressed.')
            )
        else:
            conditions.append(
                condition("Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs}" is progressing.')
            )
        status["conditions"] = conditions
        return status

    def _outcome(self, job: dict) -> JobOutcome:
        for outcome in self.outcomes:
            if outcome.match(job):
                return outcome
        return JobOutcome(lambda _: True)

    def _step_job(self, ns: str, job: dict, sim: _JobSim) -> None:
        now = time.monotonic()
        spec, status = job["spec"], job["status"]
        outcome = self._outcome(job)
        duration = outcome.duration_s if outcome.duration_s is not None else self.job_duration_s
        deadline = spec.get("activeDeadlineSeconds")
        changed = False
        if "startTime" not in status:
            status["startTime"] = now_rfc3339()
            changed = True
        if deadline and now - sim.started > deadline:
            if sim.pod:
                self._finish_pod(ns, sim.pod, exit_code=137, reason="Error")
                status["active"] = 0
                status["failed"] = status.get("failed", 0) + 1
                sim.pod = None
            self._fail_job(job, sim, "DeadlineExceeded", "Job was active longer than specified deadline")
            self._emit("jobs", "MODIFIED", job)
            return
        if sim.pod is None:
            sim.pod = self._create_pod(ns, job)
            sim.pod_started = now
            status["active"] = 1
            status["ready"] = 1
            changed = True
        elif now - sim.pod_started >= duration:
            command = spec["template"]["spec"]["containers"][0].get("command") or []
            text = outcome.log if outcome.log is not None else f"+ {shlex.join(command)}\ndone\n"
            self.logs[(ns, sim.pod)] = text
            self._finish_pod(ns, sim.pod, exit_code=outcome.exit_code,
                             reason="Completed" if outcome.exit_code == 0 else "Error")
            sim.pod = None
            status["active"] = 0
            status["ready"] = 0
            if outcome.exit_code == 0:
                status["succeeded"] = 1
                status["completionTime"] = now_rfc3339()
                stamp = now_rfc3339()
                status["conditions"] = [
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                     "message": "Reached expected number of succeeded pods",
                     "lastProbeTime": stamp, "lastTransitionTime": stamp},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                     "message": "Reached expected number of succeeded pods",
                     "lastProbeTime": stamp, "lastTransitionTime": stamp},
                ]
                sim.finished = True
            else:
                status["failed"] = status.get("failed", 0) + 1
                if status["failed"] > spec.get("backoffLimit", 6):
                    self._fail_job(job, sim, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            changed = True
        if changed:
            for key in ("active", "ready"):
                if not status.get(key):
                    status.pop(key, None)
            self._emit("jobs", "MODIFIED", job)

    def _fail_job(self, job: dict, sim: _JobSim, reason: str, message: str) -> None:
        stamp = now_rfc3339()
        job["status"]["conditions"] = [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
             "lastProbeTime": stamp, "lastTransitionTime": stamp},
            {"type": "Failed", "status": "True", "reason": reason, "message": message,
             "lastProbeTime": stamp, "lastTransitionTime": stamp},
        ]
        job["status"].pop("active", None)
        job["status"].pop("ready", None)
        sim.finished = True

    def _create_pod(self, ns: str, job: dict) -> str:
        template = copy.deepcopy(job["spec"]["template"])
        name = f"{job['metadata']['name'][:57]}-{secrets.token_hex(3)[:5]}"
        containers = template["spec"]["containers"]
        pod = {
            "metadata": {
                "name": name,
                "labels": template.get("metadata", {}).get("labels", {}),
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                    "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": template["spec"],
            "status": {
                "phase": "Running",
                "startTime": now_rfc3339(),
                "containerStatuses": [
                    {"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                     "restartCount": 0, "started": True,
                     "state": {"running": {"startedAt": now_rfc3339()}}}
                    for c in containers
                ],
            },
        }
        self._create("pods", ns, pod)
        self.logs[(ns, name)] = f"+ {shlex.join(containers[0].get('command') or [])}\n"
        return name

    def _finish_pod(self, ns: str, name: str, *, exit_code: int, reason: str) -> None:
        pod = self.objects["pods"].get((ns, name))
        if pod is None:
            return
        pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        started = pod["status"].get("startTime", now_rfc3339())
        for cs in pod["status"]["containerStatuses"]:
            cs["ready"] = False
            cs["started"] = False
            cs["state"] = {"terminated": {"exitCode": exit_code, "reason": reason,
                                          "startedAt": started, "finishedAt": now_rfc3339()}}
        self._emit("pods", "MODIFIED", pod)

    # ------------------------------------------------------------ request handling

    def _fault(self, verb: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.verb == verb and fault.path.search(path):
                fault.remaining -= 1
                return fault
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, content_type: str) -> tuple[int, Any]:
        """One non-watch request; returns (status, JSON body or text)."""
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-shipflow-emulator",
                         "platform": "linux/amd64"}
        m = _PATH.match(path)
        if not m:
            raise ApiError(404, "the server could not find the requested resource")
        resource, ns, name, sub = m["resource"], m["ns"], m["name"], m["sub"]
        group_path, group, kind = RESOURCES[resource]
        if m["prefix"] != group_path or (sub == "log" and resource != "pods") or (
            sub == "status" and resource == "pods"
        ):
            raise ApiError(404, "the server could not find the requested resource")
        dotted = f"{resource}.{group}" if group else resource
        store = self.objects[resource]
        if name is None:
            if method == "GET":
                items = [
                    copy.deepcopy(o) for (n, _), o in sorted(store.items())
                    if n == ns and _match_selector(query.get("labelSelector"), o["metadata"].get("labels", {}))
                    and _match_selector(query.get("fieldSelector"), _fields(o))
                ]
                for item in items:
                    item.pop("apiVersion", None)
                    item.pop("kind", None)
                api_version = group_path.removeprefix("/apis/").removeprefix("/api/")
                return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                             "metadata": {"resourceVersion": str(self.rv)}, "items": items}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "the request body must be a JSON object")
                return 201, copy.deepcopy(self._create(resource, ns, copy.deepcopy(body)))
            raise ApiError(405, f"{method} is not supported on {dotted}")
        obj = store.get((ns, name))
        if obj is None:
            raise ApiError(404, f'{dotted} "{name}" not found', details={"name": name, "group": group, "kind": resource})
        if method == "GET" and sub == "log":
            text = self.logs.get((ns, name), "")
            tail = query.get("tailLines")
            if tail is not None:
                lines = text.splitlines(keepends=True)
                text = "".join(lines[-int(tail):]) if int(tail) > 0 else ""
            return 200, text
        if method == "GET":
            return 200, copy.deepcopy(obj)
        if method == "PATCH":
            return 200, self._patch(resource, ns, name, sub, obj, body, content_type)
        if method == "DELETE" and sub is None:
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy") or (
                "Orphan" if resource == "jobs" else "Background"
            )
            self.deletes.append({"resource": resource, "namespace": ns, "name": name, "policy": policy})
            del store[(ns, name)]
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            self._emit(resource, "DELETED", obj)
            if resource == "jobs":
                self._jobs.pop((ns, name), None)
                for (pns, pname), pod in list(self.objects["pods"].items()):
                    if pns == ns and pod["metadata"].get("labels", {}).get("job-name") == name:
                        if policy == "Orphan":
                            pod["metadata"].pop("ownerReferences", None)
                            self._emit("pods", "MODIFIED", pod)
                        else:
                            del self.objects["pods"][(pns, pname)]
                            self._emit("pods", "DELETED", pod)
            if resource == "deployments":
                self._rollouts.pop((ns, name), None)
            if resource == "services":  # the API answers a Service's delete with the object
                return 200, copy.deepcopy(obj)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "group": group, "kind": resource,
                                     "uid": obj["metadata"]["uid"]}}
        raise ApiError(405, f"{method} is not supported on {dotted}")

    def _patch(self, resource: str, ns: str, name: str, sub: str | None, obj: dict, body: Any, content_type: str) -> dict:
        kind = RESOURCES[resource][2]
        ctype = content_type.split(";")[0].strip()
        self.patches.append({"resource": resource, "namespace": ns, "name": name, "subresource": sub,
                             "content_type": ctype, "body": copy.deepcopy(body), "at": time.time()})
        apply: Callable[[Any, Any], Any]
        if ctype == "application/strategic-merge-patch+json":
            apply = strategic_merge_patch
        elif ctype == "application/merge-patch+json":
            apply = merge_patch
        else:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                                f"application/merge-patch+json, application/strategic-merge-patch+json (got {ctype})")
        if not isinstance(body, dict):
            raise ApiError(400, "the patch must be a JSON object")
        if sub == "status":
            new = copy.deepcopy(obj)
            new["status"] = apply(obj.get("status", {}), body.get("status", {}))
        else:
            body = {k: v for k, v in body.items() if k != "status"}
            new = apply(obj, body)
            new["metadata"]["name"] = name
            new["metadata"]["namespace"] = ns
            new["metadata"]["uid"] = obj["metadata"]["uid"]
            new["status"] = obj.get("status", {})
            self._validate(resource, new)
            if resource == "deployments" and new["spec"].get("selector") != obj["spec"].get("selector"):
                raise ApiError(422, f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: '
                                    f"{_go_map(new['spec'].get('selector') or {})}: field is immutable")
            if resource == "services" and new["spec"].get("clusterIP") != obj["spec"].get("clusterIP"):
                raise ApiError(422, f'Service "{name}" is invalid: spec.clusterIPs[0]: Invalid value: '
                                    "field is immutable")
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        new["kind"] = kind
        self.objects[resource][(ns, name)] = new
        if new != obj:
            self._emit(resource, "MODIFIED", new)
        return copy.deepcopy(new)


class _Handler(BaseHTTPRequestHandler):
    emu: KubeEmulator
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _verb(self, method: str, path: str, query: dict[str, str]) -> str:
        m = _PATH.match(path)
        named = bool(m and m["name"])
        if method == "GET":
            if query.get("watch") in ("1", "true"):
                return "watch"
            return "get" if named else "list"
        return {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(method, method.lower())

    def _send_json(self, code: int, payload: Any) -> None:
        if isinstance(payload, str):
            data = payload.encode()
            ctype = "text/plain"
        else:
            data = json.dumps(payload).encode()
            ctype = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        emu = self.emu
        verb = self._verb(method, url.path, query)
        with emu.cond:
            emu.requests.append((verb, url.path))
        if self.headers.get("Authorization") != f"Bearer {emu.token}":
            self._send_json(401, status_body(401, "Unauthorized"))
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send_json(400, status_body(400, "the request body is not valid JSON"))
            return
        try:
            with emu.cond:
                fault = emu._fault(verb, url.path)
            if fault is not None:
                raise _fault_error(fault, verb, url.path)
            if verb == "watch":
                self._watch(url.path, query)
                return
            with emu.cond:
                code, payload = emu.handle(method, url.path, query, body, self.headers.get("Content-Type", ""))
        except ApiError as e:
            code, payload = e.code, e.body
        self._send_json(code, payload)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _chunk(self, payload: dict) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, path: str, query: dict[str, str]) -> None:
        emu = self.emu
        m = _PATH.match(path)
        if not m or m["name"] is not None or RESOURCES[m["resource"]][0] != m["prefix"]:
            raise ApiError(404, "the server could not find the requested resource")
        resource, ns = m["resource"], m["ns"]
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")

        def matches(obj: dict) -> bool:
            return (obj["metadata"].get("namespace") == ns
                    and _match_selector(labels, obj["metadata"].get("labels", {}))
                    and _match_selector(fields, _fields(obj)))

        pending: list[dict] = []
        with emu.cond:
            since = query.get("resourceVersion") or "0"
            if since == "0":
                cursor = emu.rv
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for o in emu.objects[resource].values() if matches(o)]
            else:
                cursor = int(since)
                oldest = emu.events[0][0] if emu.events else emu.rv + 1
                if cursor < oldest - 1:
                    gone = status_body(410, f"too old resource version: {cursor} ({oldest - 1})", reason="Expired")
                    pending = [{"type": "ERROR", "object": gone}]
                    deadline = 0.0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if deadline == 0.0:
                for event in pending:
                    self._chunk(event)
                pending = []
            while deadline:
                for event in pending:
                    self._chunk(event)
                pending = []
                with emu.cond:
                    while True:
                        fresh = [e for e in emu.events if e[0] > cursor]
                        remaining = deadline - time.monotonic()
                        if fresh or remaining <= 0 or emu._stopping:
                            break
                        emu.cond.wait(min(remaining, 0.5))
                    for rv, res, kind, obj in fresh:
                        cursor = rv
                        if res == resource and matches(obj):
                            pending.append({"type": kind, "object": copy.deepcopy(obj)})
                    if not pending and (time.monotonic() >= deadline or emu._stopping):
                        break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _go_map(labels: dict) -> str:
    """A label map as the API's messages print it (Go's `%#v` of a map[string]string)."""
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return "map[string]string{" + inner + "}"


def _fault_error(fault: Fault, verb: str, path: str) -> ApiError:
    m = _PATH.match(path)
    resource = m["resource"] if m else "resource"
    name = m["name"] if m else None
    ns = m["ns"] if m else ""
    group = RESOURCES.get(resource, ("", "", ""))[1]
    dotted = f"{resource}.{group}" if group else resource
    what = f'{dotted} "{name}"' if name else dotted
    default = {
        403: f'{what} is forbidden: User "system:serviceaccount:{ns}:shipflow" cannot {verb} resource '
             f'"{resource}" in API group "{group}" in the namespace "{ns}"',
        404: f"{what} not found",
        409: f"Operation cannot be fulfilled on {what}: the object has been modified; please apply "
             "your changes to the latest version and try again",
        500: "Internal error occurred: injected failure",
    }.get(fault.code, f"injected failure {fault.code}")
    return ApiError(fault.code, fault.message or default)
