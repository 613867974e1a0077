"""Our flow's probes and strategies as Kubernetes fields, and reading the objects the API
returns (metadata, a Deployment's container, label values)."""

from __future__ import annotations

import math
import re
from typing import Any

from kubernetes import client

from shipflow.activities.targets.base import Invalid
from shipflow.workflows.spec import Probe, Probes, Strategy


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
        http: dict[str, Any] = {
            "path": probe.http.path,
            "port": port,
            "scheme": probe.http.scheme.upper(),
        }
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


def strategy_to_k8s(strategy: Strategy) -> dict[str, Any]:
    """A Deployment's `spec.strategy` (strategic merge patch) for a flow's strategy.

    Counts and percentages go as written (Kubernetes' IntOrString, rounded by the
    controller). Recreate must not keep a `rollingUpdate` (the API refuses it), so the
    patch removes it.
    """
    if strategy.canary is not None or strategy.blue_green is not None:
        raise Invalid(
            f"strategy {strategy.kind} is not a Deployment strategy (k8s_progressive runs it)"
        )
    if strategy.rolling is not None:
        return {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": strategy.rolling.max_surge,
                "maxUnavailable": strategy.rolling.max_unavailable,
            },
        }
    return {"type": "Recreate", "rollingUpdate": None}


def label_value(text: str) -> str:
    """`text` made a valid label value: 63 characters of [A-Za-z0-9._-], alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def meta_of(obj: Any) -> client.V1ObjectMeta:
    """An object's metadata; the API always sends it, the client's types allow None."""
    meta = obj.metadata
    return meta if meta is not None else client.V1ObjectMeta()


def container_of(dep: client.V1Deployment, name: str | None) -> client.V1Container:
    pod_spec = dep.spec.template.spec if dep.spec else None
    containers = (pod_spec.containers if pod_spec else None) or []
    if not containers:
        raise Invalid(f"deployment {meta_of(dep).name!r} has no containers")
    if name is None:
        return containers[0]
    for item in containers:
        if item.name == name:
            return item
    names = ", ".join(c.name for c in containers)
    raise Invalid(f"deployment {meta_of(dep).name!r} has no container {name!r} (it has: {names})")
