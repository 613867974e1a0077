"""The strategy an undo rolls out with: never a canary or blue-green again (a compensation
must not wait for an operator's promotion), but recreate stays recreate."""

from __future__ import annotations

from typing import Any

import pytest

from shipflow.activities.deploy import back_strategy
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.io.deploy import RolloutInput
from shipflow.workflows.spec import Strategy

CANARY = {"canary": {"steps": [{"set_weight": 20}, {"pause": {}}]}}


def rollout(purpose: str, strategy: dict[str, Any] | None, target: dict[str, Any]) -> RolloutInput:
    context = StepContext.model_validate({"run_id": "r", "step_id": "s", "flow": "f", "stage": "p"})
    return RolloutInput(context=context, target=target, service="web", image="v1", purpose=purpose,
                        strategy=Strategy.model_validate(strategy) if strategy else None)


@pytest.mark.parametrize(
    ("purpose", "step", "declared", "kind", "expected"),
    [
        ("deploy", CANARY, None, "local", "canary"),
        ("undo", CANARY, None, "local", "rolling"),
        ("undo", None, CANARY, "local", "rolling"),  # the service's own canary, overridden
        ("rollback", {"blue_green": {}}, None, "local", "rolling"),
        ("undo", {"recreate": {}}, None, "local", "recreate"),
        ("undo", None, {"recreate": {}}, "local", None),  # the service's recreate applies
        ("undo", CANARY, None, "kubernetes", None),  # the Deployment's own strategy
    ],
)
def test_undo_and_rollback_go_back_plainly(
    purpose: str, step: dict[str, Any] | None, declared: dict[str, Any] | None, kind: str, expected: str | None
) -> None:
    service = {"command": ["x"], "port": 1, **({"strategy": declared} if declared else {})}
    target = {"kind": kind, "services": {"web": service}} if kind == "local" else {"kind": kind}
    chosen = back_strategy(rollout(purpose, step, target))
    assert (chosen.kind if chosen else None) == expected
