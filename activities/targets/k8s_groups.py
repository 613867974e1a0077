"""Secret/config groups on the kubernetes target: one object per group version.

A group version becomes a `Secret` (kind secret) or a `ConfigMap` (kind config) named
`shipflow-<group>-<version>`, immutable and labelled, created when a rollout or a migrate
Job first needs it. The Deployment's container and the Job's container reference them
with `envFrom`, in the order the groups apply (Kubernetes lets a later source win, as
shipflow does), so the values never appear in the Deployment or the Job and a new group
version changes the pod template: a normal, health-probed rollout.

An object is collected when nothing refers to it any more: no ReplicaSet (the
Deployment's history, which `kubectl rollout undo` would bring back), no Deployment
template and no Job in the namespace. So a version stays as long as a revision that
could come back needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from shipflow.activities.core.group_select import GroupSource
from shipflow.activities.targets.base import Conflict, TargetError
from shipflow.activities.targets.k8s_errors import call

log = logging.getLogger("shipflow.kubernetes")

MANAGED = {"app.kubernetes.io/managed-by": "shipflow"}
GROUP_LABEL = "shipflow/group"
VERSION_LABEL = "shipflow/group-version"
PREFIX = "shipflow-"
#: An object younger than this is never collected: a rollout or Job that is about to
#: reference it (created, not yet in a template) must find it.
COLLECT_AFTER_S = 300.0


def object_name(group: str, version: int) -> str:
    return f"{PREFIX}{group}-{version}"


def env_from(sources: Iterable[GroupSource]) -> list[dict[str, Any]]:
    """The container's `envFrom` entries for the groups, in the order they apply."""
    out: list[dict[str, Any]] = []
    for source in sources:
        ref = {"name": object_name(source.name, source.version)}
        out.append({"secretRef": ref} if source.kind == "secret" else {"configMapRef": ref})
    return out


def wanted_env_from(
    current: list[Any] | None, sources: list[GroupSource]
) -> list[dict[str, Any]] | None:
    """The container's `envFrom` to put in place: its own entries (not shipflow's) then the
    groups'. None when there is nothing of shipflow's to put or take away."""
    have = plain(current)
    if not sources and not any(_ours(e) for e in have):
        return None
    return [e for e in have if not _ours(e)] + env_from(sources)


def plain(entries: list[Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries or []:
        if isinstance(entry, dict):
            out.append(entry)
        else:
            out.append(client.ApiClient().sanitize_for_serialization(entry))  # a V1EnvFromSource
    return out


def _ours(entry: dict[str, Any]) -> bool:
    ref = entry.get("secretRef") or entry.get("configMapRef") or {}
    return str(ref.get("name", "")).startswith(PREFIX)


def _of_deployment(obj: Any, names: set[str]) -> bool:
    """Whether `obj` is one of the Deployments `names` or a ReplicaSet they own."""
    if not names:
        return False
    meta = obj.metadata
    if getattr(obj, "kind", None) == "Deployment" or isinstance(obj, client.V1Deployment):
        return bool(meta and meta.name in names)
    return any(
        ref.kind == "Deployment" and ref.name in names
        for ref in (meta and meta.owner_references) or []
    )


class GroupObjects:
    """Creates and collects the group objects of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def materialise(self, sources: Iterable[GroupSource]) -> list[str]:
        """Create each group version's object unless it exists (it never changes).

        Returns the names of the objects this call created (not those that existed): a
        canary that is aborted may delete those at once (`collect(fresh=...)`).
        """
        made: list[str] = []
        for source in sources:
            name = object_name(source.name, source.version)
            metadata = {
                "name": name,
                "labels": {
                    **MANAGED,
                    GROUP_LABEL: source.name,
                    VERSION_LABEL: str(source.version),
                },
            }
            kind = "secrets" if source.kind == "secret" else "configmaps"
            create: Any
            body: dict[str, Any] = {"metadata": metadata, "immutable": True}
            if source.kind == "secret":
                body.update(
                    apiVersion="v1", kind="Secret", type="Opaque", stringData=dict(source.values)
                )
                create = self.core.create_namespaced_secret
            else:
                body.update(apiVersion="v1", kind="ConfigMap", data=dict(source.values))
                create = self.core.create_namespaced_config_map
            try:
                call(
                    create,
                    self.namespace,
                    body,
                    verb="create",
                    kind=kind,
                    name=name,
                    namespace=self.namespace,
                    retry_conflicts=False,
                )
            except Conflict:
                continue  # made by an earlier attempt or another service: same version, same data
            made.append(name)
        return made

    def collect(self, fresh: Iterable[str] = (), gone: Iterable[str] = ()) -> list[str]:
        """Delete the group objects nothing refers to; returns their names.

        `fresh` names objects the caller made itself and no longer needs (an aborted
        canary's): those go even when younger than `COLLECT_AFTER_S`, if nothing refers to
        them. `gone` names Deployments just deleted: they and their ReplicaSets (which the
        garbage collector removes a moment later) count as referring to nothing.

        Best effort: a rollout that succeeded (or an abort) never fails because of it (a
        Role without the list/delete verbs, an API blip); what is left is collected after a
        later rollout.
        """
        try:
            return self._collect(set(fresh), set(gone))
        except TargetError as e:
            log.warning("could not collect group objects in %s: %s", self.namespace, e)
            return []

    def _collect(self, fresh: set[str], gone: set[str]) -> list[str]:
        referenced: set[str] = set()
        templates: list[Any] = []
        listers: list[tuple[Any, str]] = [
            (self.apps.list_namespaced_replica_set, "replicasets"),
            (self.apps.list_namespaced_deployment, "deployments"),
            (self.batch.list_namespaced_job, "jobs"),
        ]
        for lister, kind in listers:
            items: Any = call(
                lister, self.namespace, verb="list", kind=kind, name=None, namespace=self.namespace
            ).items
            templates += [
                i.spec.template
                for i in items
                if i.spec and i.spec.template and not _of_deployment(i, gone)
            ]
        for template in templates:
            pod = template.spec
            for container in [*(pod.containers or []), *(pod.init_containers or [])]:
                for entry in container.env_from or []:
                    ref = entry.secret_ref or entry.config_map_ref
                    if ref is not None and ref.name:
                        referenced.add(ref.name)
        selector = f"app.kubernetes.io/managed-by=shipflow,{GROUP_LABEL}"
        deleted: list[str] = []
        kinds: list[tuple[Any, Any, str]] = [
            (self.core.list_namespaced_secret, self.core.delete_namespaced_secret, "secrets"),
            (
                self.core.list_namespaced_config_map,
                self.core.delete_namespaced_config_map,
                "configmaps",
            ),
        ]
        for lister, deleter, kind in kinds:
            found: Any = call(
                lister,
                self.namespace,
                label_selector=selector,
                verb="list",
                kind=kind,
                name=None,
                namespace=self.namespace,
            ).items
            now = datetime.now(UTC)
            for obj in found:
                name = obj.metadata.name
                born = obj.metadata.creation_timestamp
                young = (
                    name not in fresh
                    and born is not None
                    and (now - born).total_seconds() < COLLECT_AFTER_S
                )
                if name in referenced or young:
                    continue
                try:
                    call(
                        deleter,
                        name,
                        self.namespace,
                        verb="delete",
                        kind=kind,
                        name=name,
                        namespace=self.namespace,
                    )
                    deleted.append(name)
                except TargetError as e:  # already gone, or not allowed: try again next time
                    log.info("could not collect %s/%s: %s", kind, name, e)
        return deleted
