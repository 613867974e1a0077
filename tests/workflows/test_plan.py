"""The flow contract and the compiler: many good and bad flows, pure and fast."""

from __future__ import annotations

import textwrap

import pytest

from shipflow.workflows.durations import format_duration, parse_duration
from shipflow.workflows.plan import ActionPlan, GroupPlan, compile, resolve_step_outputs
from shipflow.workflows.spec import FlowError, flow_json_schema, load_flow_text

HEAD = """
apiVersion: shipflow/v1
name: web
stage: production
"""


def flow(body: str, head: str = HEAD) -> str:
    return head + textwrap.dedent(body)


def problems(
    text: str, args: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    with pytest.raises(FlowError) as caught:
        compile(load_flow_text(text), args, env)
    return caught.value.problems


FULL = flow(
    """
    target:
      kind: local
      services:
        api: {command: [python, app.py, --port, "{port}", --version, "{image}"], port: 8080, replicas: 3,
              probes: {readiness: {http: {path: /healthz}, period: 1s, failure_threshold: 3}}}
    concurrency: queue
    args:
      image: {default: "demo:1"}
    triggers:
      - cron: "0 3 * * 1-5"
      - git: {repo: org/app, branches: [main], paths: ["src/**"]}
    steps:
      - backup:  {id: db-backup, database: "${env.DATABASE_URL}", to: "s3://bucket/prefix/"}
      - migrate: {id: migrate, command: [alembic, upgrade, head], image: "${args.image}",
                  timeout: 10m, retries: 3, undo: {restore: db-backup}}
      - parallel:
          - deploy:  {id: api, service: api, image: "${args.image}",
                      probes: {readiness: {http: {path: /healthz}, period: 1s, failure_threshold: 3}}}
          - promote: {id: worker, service: worker, from: staging}
      - check:   {id: smoke, http: {url: "http://127.0.0.1:8080/healthz"}, period: 1s,
                  success_threshold: 3, failure_threshold: 5}
      - approve: {id: go-live, timeout: 4h}
      - wait:    {id: soak, duration: 5m}
      - notify:  {id: tell, webhook: "https://hooks.example/x", message: "released ${args.image} after ${steps.soak.duration_s}s"}
      - sequence:
          - wait: {id: w2, duration: 1h30m}
    """
)


def test_design_example_compiles_to_an_explicit_plan() -> None:
    plan = compile(load_flow_text(FULL), {"image": "demo:2"})
    ids = [a.id for a in plan.actions()]
    assert ids == [
        "db-backup",
        "migrate",
        "api",
        "worker",
        "smoke",
        "go-live",
        "soak",
        "tell",
        "w2",
    ]
    migrate = plan.action("migrate")
    assert migrate.params["image"] == "demo:2"
    assert migrate.retry.max_attempts == 4 and migrate.timeout_s == 600
    assert (
        migrate.undo is not None
        and migrate.undo.kind == "restore"
        and migrate.undo.backup_step == "db-backup"
    )
    # Secrets stay references: the value is read on the worker.
    assert plan.action("db-backup").params["database"] == "${env.DATABASE_URL}"
    assert plan.env_refs == ["DATABASE_URL"]
    # Defaults are explicit: deploy/promote undo to the previous image, retries/timeouts filled in.
    assert plan.action("api").undo is not None and plan.action("api").undo.kind == "previous_image"
    assert plan.action("worker").undo is not None
    assert plan.action("tell").retry.max_attempts == 4 and plan.action("tell").timeout_s == 30
    assert plan.action("smoke").undo is None
    assert plan.action("w2").params["duration"] == "1h30m"
    group = plan.root.children[2]
    assert isinstance(group, GroupPlan) and group.node == "parallel"
    assert (
        plan.action("tell").params["message"] == "released demo:2 after ${steps.soak.duration_s}s"
    )


def test_plan_is_json_round_trippable() -> None:
    plan = compile(load_flow_text(FULL))
    again = type(plan).model_validate_json(plan.model_dump_json())
    assert again == plan


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            "steps:\n  - parallel:\n      - deploy: {id: a, service: a}\n",
            "steps[0].parallel[0].deploy.image",
            "field required",
        ),
        (
            "steps:\n  - deploy: {id: a, service: a, image: x, colour: red}\n",
            "steps[0].deploy.colour",
            "unknown field",
        ),
        ("steps:\n  - frobnicate: {id: a}\n", "steps[0]", "exactly one key"),
        ("steps:\n  - wait: {id: a, duration: 5q}\n", "steps[0].wait.duration", "invalid duration"),
        ("steps:\n  - wait: {id: 'bad id', duration: 1s}\n", "steps[0].wait.id", "pattern"),
        ("steps:\n  - check: {id: c}\n", "steps[0].check", "exactly one of http or tcp"),
        ("steps:\n  - migrate: {id: m, command: []}\n", "steps[0].migrate.command", "at least 1"),
        (
            "steps:\n  - migrate: {id: m, command: [x], retries: -1}\n",
            "steps[0].migrate.retries",
            "greater than or equal",
        ),
        ("steps: []\n", "steps", "at least 1"),
        ("steps:\n  - promote: {id: p, service: s}\n", "steps[0].promote.from", "field required"),
        ("target: {kind: nomad}\nsteps:\n  - wait: {id: a, duration: 1s}\n", "target", "kind"),
        (
            "steps:\n  - deploy: {id: a, service: a, image: x, probes: {readiness: {period: 1s}}}\n",
            "steps[0].deploy.probes.readiness",
            "exactly one of http, tcp or exec",
        ),
    ],
)
def test_shape_errors_name_the_path(body: str, path: str, message: str) -> None:
    with pytest.raises(FlowError) as caught:
        load_flow_text(flow(body))
    found = caught.value.problems
    assert any(p == path and message in m for p, m in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = flow(
        """
        steps:
          - deploy: {id: a, service: a}
          - wait: {id: b, duration: soon}
        """
    )
    with pytest.raises(FlowError) as caught:
        load_flow_text(text)
    paths = [p for p, _ in caught.value.problems]
    assert paths == ["steps[0].deploy.image", "steps[1].wait.duration"]


def test_header_errors() -> None:
    with pytest.raises(FlowError) as caught:
        load_flow_text(
            "apiVersion: shipflow/v2\nname: Web_App\nsteps: [{wait: {id: a, duration: 1s}}]\n"
        )
    paths = {p for p, _ in caught.value.problems}
    assert {"apiVersion", "name", "stage"} <= paths


def test_invalid_yaml_names_line_and_column() -> None:
    with pytest.raises(FlowError) as caught:
        load_flow_text("apiVersion: shipflow/v1\nsteps: [\n  - : :\n")
    (where, message), *_ = caught.value.problems
    assert where.startswith("line ") and "invalid YAML" in message


def test_not_a_mapping() -> None:
    with pytest.raises(FlowError, match="YAML mapping"):
        load_flow_text("- just\n- a list\n")


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            "steps:\n  - wait: {id: a, duration: 1s}\n  - wait: {id: a, duration: 1s}\n",
            "steps[1].wait.id",
            "duplicate step id 'a' (first at steps[0].wait.id)",
        ),
        (
            "steps:\n  - parallel:\n    - wait: {id: a, duration: 1s}\n    - sequence:\n      - wait: {id: a, duration: 1s}\n",
            "steps[0].parallel[1].sequence[0].wait.id",
            "duplicate step id",
        ),
        (
            "steps:\n  - notify: {id: n, webhook: 'http://x', message: '${args.nope}'}\n",
            "steps[0].notify.message",
            "${args.nope}: undeclared argument",
        ),
        (
            "steps:\n  - notify: {id: n, webhook: 'http://x', message: '${steps.later.duration_s}'}\n  - wait: {id: later, duration: 1s}\n",
            "steps[0].notify.message",
            "does not run before this one",
        ),
        (
            "steps:\n  - parallel:\n    - wait: {id: a, duration: 1s}\n    - notify: {id: n, webhook: 'http://x', message: '${steps.a.duration_s}'}\n",
            "steps[0].parallel[1].notify.message",
            "does not run before this one on the same path",
        ),
        (
            "steps:\n  - wait: {id: a, duration: 1s}\n  - notify: {id: n, webhook: 'http://x', message: '${steps.a.colour}'}\n",
            "steps[1].notify.message",
            "a wait step has no output 'colour'",
        ),
        (
            "steps:\n  - notify: {id: n, webhook: 'http://x', message: '${steps.ghost.x}'}\n",
            "steps[0].notify.message",
            "no step with id 'ghost'",
        ),
        (
            "steps:\n  - notify: {id: n, webhook: 'http://x', message: '${vault.x}'}\n",
            "steps[0].notify.message",
            "unknown namespace 'vault'",
        ),
        (
            "steps:\n  - notify: {id: n, webhook: 'http://x', message: '${git.sha}'}\n",
            "steps[0].notify.message",
            "git trigger",
        ),
        (
            "steps:\n  - migrate: {id: m, command: [x], undo: {restore: b}}\n  - backup: {id: b, database: 'sqlite:///x', to: 's3://b/'}\n",
            "steps[0].migrate.undo.restore",
            "does not run before this step",
        ),
        (
            "steps:\n  - wait: {id: w, duration: 1s}\n  - migrate: {id: m, command: [x], undo: {restore: w}}\n",
            "steps[1].migrate.undo.restore",
            "'w' is a wait step, not a backup",
        ),
        (
            "steps:\n  - migrate: {id: m, command: [x], undo: {restore: nope}}\n",
            "steps[0].migrate.undo.restore",
            "no step with id 'nope'",
        ),
        (
            "steps:\n  - parallel:\n    - backup: {id: b, database: 'sqlite:///x', to: 's3://b/'}\n    - migrate: {id: m, command: [x], undo: {restore: b}}\n",
            "steps[0].parallel[1].migrate.undo.restore",
            "does not run before",
        ),
        (
            "steps:\n  - check: {id: c, tcp: {port: 1}, undo: {command: [x]}}\n",
            "steps[0].check.undo",
            "not supported on check steps",
        ),
        (
            "steps:\n  - approve: {id: a, retries: 2}\n",
            "steps[0].approve.retries",
            "cannot be retried",
        ),
    ],
)
def test_reference_errors_name_the_path(body: str, path: str, message: str) -> None:
    found = problems(flow(body))
    assert any(p == path and message in m for p, m in found), found


def test_run_args_are_checked_against_the_declaration() -> None:
    text = flow(
        "args:\n  image: {}\n  tier: {default: gold}\nsteps:\n  - wait: {id: a, duration: 1s}\n"
    )
    found = problems(text, {"imgae": "x"})
    assert ("args.imgae", "undeclared argument (declared: image, tier)") in found
    assert ("args.image", "required argument not given") in found
    plan = compile(load_flow_text(text), {"image": "v2"})
    assert plan.args == {"image": "v2", "tier": "gold"}


def test_args_shorthand_and_non_string_values() -> None:
    text = flow("args: {replicas: 3, canary: true}\nsteps:\n  - wait: {id: a, duration: 1s}\n")
    plan = compile(load_flow_text(text), {"replicas": 5})
    assert plan.args == {"replicas": "5", "canary": "true"}


def test_env_refs_checked_only_when_env_given_and_never_copied() -> None:
    text = flow("steps:\n  - notify: {id: n, webhook: '${env.HOOK}', message: hi}\n")
    assert problems(text, env={}) == [
        ("steps[0].notify.webhook", "${env.HOOK}: not set in the environment")
    ]
    plan = compile(load_flow_text(text), env={"HOOK": "https://secret.example/token"})
    assert "secret.example" not in plan.model_dump_json()


def test_git_context_resolves_when_given() -> None:
    text = flow("steps:\n  - deploy: {id: d, service: s, image: 'app:${git.short_sha}'}\n")
    plan = compile(load_flow_text(text), context={"git": {"short_sha": "abc1234"}})
    assert plan.action("d").params["image"] == "app:abc1234"


def test_undo_none_and_command() -> None:
    text = flow(
        "steps:\n  - deploy: {id: d, service: s, image: x, undo: none}\n"
        "  - migrate: {id: m, command: [up], undo: {command: [down, '${steps.d.image}']}}\n"
    )
    plan = compile(load_flow_text(text))
    assert plan.action("d").undo is None
    undo = plan.action("m").undo
    assert (
        undo is not None and undo.kind == "command" and undo.command == ["down", "${steps.d.image}"]
    )


def test_nesting_to_any_depth() -> None:
    text = flow(
        "steps:\n  - sequence:\n    - parallel:\n      - sequence:\n        - parallel:\n"
        "          - wait: {id: deep, duration: 1s}\n          - wait: {id: deep2, duration: 1s}\n"
        "  - notify: {id: n, webhook: 'http://x', message: '${steps.deep.duration_s}'}\n"
    )
    plan = compile(load_flow_text(text))
    assert [a.id for a in plan.actions()] == ["deep", "deep2", "n"]
    assert (
        plan.action("deep").path == "steps[0].sequence[0].parallel[0].sequence[0].parallel[0].wait"
    )


def test_resolve_step_outputs_at_run_time() -> None:
    value = {"a": ["${steps.m.exit_code}", "${env.X}"], "b": "v=${steps.m.output}!"}
    out = resolve_step_outputs(value, {"m": {"exit_code": 0, "output": "done"}})
    assert out == {"a": ["0", "${env.X}"], "b": "v=done!"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("0.5s", 0.5),
        ("90s", 90),
        ("10m", 600),
        ("4h", 14400),
        ("1h30m", 5400),
        (12, 12),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "5", "ten minutes", "1h 30m", "-5s", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.25, 90, 5400, 3600)] == ["250ms", "1m30s", "1h30m", "1h"]


def test_json_schema_describes_every_step_kind() -> None:
    schema = flow_json_schema()
    text = str(schema)
    for kind in (
        "backup",
        "migrate",
        "deploy",
        "promote",
        "check",
        "approve",
        "wait",
        "notify",
        "parallel",
        "sequence",
    ):
        assert f"'{kind}'" in text
    assert "apiVersion" in schema["properties"]


def test_actions_are_in_plan_order() -> None:
    plan = compile(load_flow_text(FULL))
    assert all(isinstance(a, ActionPlan) for a in plan.actions())
