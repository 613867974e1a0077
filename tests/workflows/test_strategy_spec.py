"""Rollout strategies in the flow file: shape, rounding, and errors that name the field."""

from __future__ import annotations

import textwrap

import pytest

from shipflow.workflows.plan import compile
from shipflow.workflows.spec import FlowError, RollingStrategy, Strategy, load_flow_text

HEAD = "apiVersion: shipflow/v1\nname: web\nstage: production\n"
TARGET = """
target:
  kind: local
  services:
    api: {command: [app, "{port}"], port: 8080, replicas: 4, strategy: {rolling: {max_surge: 25%}}}
"""


def problems(body: str) -> list[tuple[str, str]]:
    with pytest.raises(FlowError) as caught:
        compile(load_flow_text(HEAD + TARGET + textwrap.dedent(body)))
    return caught.value.problems


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "expected"),
    [
        (1, 0, 3, (1, 0)),  # the default
        ("25%", "25%", 10, (3, 2)),  # surge rounds up, unavailable down (Kubernetes)
        ("50%", 0, 3, (2, 0)),
        ("0%", "10%", 3, (0, 1)),  # both 0 after rounding: one unavailable, as Kubernetes
        (2, "100%", 4, (2, 4)),
    ],
)
def test_counts_and_percentages_resolve_like_kubernetes(
    surge: int | str, unavailable: int | str, replicas: int, expected: tuple[int, int]
) -> None:
    strategy = RollingStrategy(max_surge=surge, max_unavailable=unavailable)
    assert strategy.resolved(replicas) == expected


def test_a_step_strategy_reaches_the_plan_and_the_service_keeps_its_own() -> None:
    text = HEAD + TARGET + textwrap.dedent(
        """
        steps:
          - deploy: {id: a, service: api, image: v2, strategy: {rolling: {max_surge: 2, max_unavailable: 0}}}
          - deploy: {id: b, service: api, image: v3, strategy: {recreate: {}}}
        """
    )
    plan = compile(load_flow_text(text))
    params = {a.id: a.params for a in plan.actions()}
    step_a = Strategy.model_validate(params["a"]["strategy"])
    assert step_a.rolling is not None and step_a.rolling.resolved(4) == (2, 0)
    assert Strategy.model_validate(params["b"]["strategy"]).kind == "recreate"
    service = Strategy.model_validate(plan.target["services"]["api"]["strategy"])
    assert service.rolling is not None and service.rolling.resolved(4) == (1, 0)


@pytest.mark.parametrize(
    ("strategy", "path", "message"),
    [
        ("{rolling: {max_surge: 0, max_unavailable: 0}}", "steps[0].deploy.strategy.rolling",
         "max_surge and max_unavailable cannot both be 0"),
        ("{rolling: {max_surge: 0%, max_unavailable: 0}}", "steps[0].deploy.strategy.rolling",
         "cannot both be 0"),
        ("{rolling: {max_surge: -1}}", "steps[0].deploy.strategy.rolling.max_surge", "0 or more"),
        ("{rolling: {max_unavailable: lots}}", "steps[0].deploy.strategy.rolling.max_unavailable", ""),
        ("{rolling: {}, recreate: {}}", "steps[0].deploy.strategy", "exactly one of"),
        ("{}", "steps[0].deploy.strategy", "exactly one of"),
        ("{blue: {}}", "steps[0].deploy.strategy.blue", "unknown field"),
        ("{blue_green: {active_service: Web_1}}", "steps[0].deploy.strategy.blue_green.active_service",
         "should match pattern"),
        ("{blue_green: {active_service: web, preview_service: web}}", "steps[0].deploy.strategy.blue_green",
         "preview_service must differ from active_service"),
    ],
)
def test_bad_strategies_are_refused_at_apply_naming_the_field(strategy: str, path: str, message: str) -> None:
    found = problems(f"steps:\n  - deploy: {{id: a, service: api, image: v2, strategy: {strategy}}}\n")
    assert any(p.startswith(path) and message in m for p, m in found), found
