"""Secret/config group values for a deploy or a migrate step, read on the worker when used.

The activity input names only what selects groups (env_from, tags, env_order) or the exact
versions to use (a rollback, an undo); the values are read here, from the database, in
the activity's memory, and go straight to the target. Temporal sees the group names and
version numbers the step used (its output), never a value.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from temporalio.exceptions import ApplicationError

from shipflow.activities.core.group_select import Consumer, Resolved, SelectionError, resolve
from shipflow.activities.core.groups import GroupKeyMissing, GroupNotFound, GroupStore
from shipflow.activities.core.settings import Settings, get_settings
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.io.deploy import RolloutInput
from shipflow.workflows.io.jobs import JobInput

NONE = Resolved(env={}, versions={}, secrets=[])


class GroupEnv:
    """Resolves the groups of a consumer through a `GroupStore` on the worker's database."""

    def __init__(self, engine: Engine, settings: Settings | None = None):
        self.store = GroupStore(engine, settings or get_settings())

    def _resolve(
        self, consumer: Consumer, pinned: dict[str, int] | None, context: StepContext, purpose: str
    ) -> Resolved:
        if pinned is None and not consumer.env_from and not consumer.tags:
            return NONE
        try:
            resolved = resolve(self.store, consumer, pinned)
            self._audit_secret_reads(resolved, context, purpose)
            return resolved
        except SelectionError as e:
            raise ApplicationError(str(e), type="GroupSelection", non_retryable=True) from None
        except GroupNotFound as e:
            raise ApplicationError(str(e), type="GroupNotFound", non_retryable=True) from None
        except GroupKeyMissing as e:
            raise ApplicationError(str(e), type="GroupKeyMissing", non_retryable=True) from None

    def _audit_secret_reads(self, resolved: Resolved, context: StepContext, purpose: str) -> None:
        """One `inject` entry per secret group version this attempt read, in the group's
        audit trail beside the admins' changes and reveals: which keys (never a value) went
        to which run's step. Config groups are not recorded: nothing in them is secret."""
        actor = f"run {context.run_id} step {context.step_id} ({purpose})"[:200]
        self.store.record_uses(
            [(s.name, s.version, s.values) for s in resolved.sources if s.kind == "secret"], actor
        )

    def for_rollout(self, input: RolloutInput) -> Resolved:
        """The groups of `input.service` (none for a service the target does not declare)."""
        declared = _local_service(input.target, input.service)
        consumer = Consumer(
            stage=input.context.stage,
            service=input.service,
            env_from=list(declared.get("env_from") or []),
            tags=[*input.flow_tags, *(declared.get("tags") or [])],
            order=list(input.env_order),
            where=f"target.services.{input.service}",
        )
        resolved = self._resolve(consumer, input.groups, input.context, input.purpose)
        return _for_target(resolved, input.target)

    def for_job(self, input: JobInput) -> Resolved:
        """A migrate step's groups; its undo command gets the versions the step got."""
        if input.purpose not in ("migrate", "undo"):
            return NONE
        consumer = Consumer(
            stage=input.context.stage,
            service=None,
            env_from=list(input.env_from),
            tags=list(input.tags),
            order=list(input.env_order),
            where=f"steps.{input.context.step_id}",
        )
        resolved = self._resolve(consumer, input.groups, input.context, input.purpose)
        return _for_target(resolved, input.target)


def _for_target(resolved: Resolved, target: dict[str, Any]) -> Resolved:
    """Kubernetes references each group version (a Secret or ConfigMap) from the pod
    template: the values must not be copied into the Deployment or Job as plain `env`."""
    if target.get("kind") == "kubernetes":
        return Resolved(
            env={}, versions=resolved.versions, secrets=resolved.secrets, sources=resolved.sources
        )
    return Resolved(
        env=resolved.env, versions=resolved.versions, secrets=resolved.secrets, sources=[]
    )


def _local_service(target: dict[str, Any], service: str) -> dict[str, Any]:
    services = target.get("services") if target.get("kind", "local") == "local" else None
    found = (services or {}).get(service)
    return found if isinstance(found, dict) else {}
