"""Targets: where services run. `make_target` picks the implementation from the flow."""

from __future__ import annotations

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
