"""Targets: where services run. `make_target` picks the implementation from the flow."""

from __future__ import annotations

import importlib
from typing import Any

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import Target


def make_target(spec: dict[str, Any], settings: Settings) -> Target:
    """Build the Target a flow's `target:` section names.

    Imports are lazy so that a worker for local flows needs no kubernetes config, and
    the other way round.
    """
    kind = spec.get("kind", "local")
    if kind == "local":
        from shipflow.activities.targets.local.target import LocalTarget

        return LocalTarget(spec, settings)
    if kind == "kubernetes":
        from shipflow.activities.targets.kubernetes import KubernetesTarget

        return KubernetesTarget(spec, settings)
    raise ValueError(f"unknown target kind {kind!r}")


#: The modules a rollout imports on its first use (the kubernetes client among them).
TARGET_MODULES = (
    "shipflow.activities.targets.local.target",
    "shipflow.activities.targets.kubernetes",
    "shipflow.activities.targets.k8s_progressive",
)


def preload_targets() -> None:
    """Import every target now, at worker start, rather than in a step's first attempt.

    Importing the kubernetes client takes a second on a quiet machine and several on a
    busy one; inside an activity that time passes before its first heartbeat, so a short
    heartbeat timeout could fail the attempt for an import. The lazy imports of
    `make_target` stay for processes that never run a step (the CLI, the API).
    """
    for name in TARGET_MODULES:
        importlib.import_module(name)
