"""Flow limits, bounded durations and literal secrets (issue #9, parts 3 and 5): pure and fast."""

from __future__ import annotations

import time

import pytest

from shipflow.workflows.durations import MAX_DURATION_S, parse_duration
from shipflow.workflows.plan import MAX_PLAN_BYTES, compile
from shipflow.workflows.spec import (
    MAX_NESTING,
    MAX_STEPS,
    FlowError,
    literal_secret_problems,
    load_flow_text,
)

HEAD = "apiVersion: shipflow/v1\nname: t\nstage: s\n"


def refused(text: str) -> list[tuple[str, str]]:
    with pytest.raises(FlowError) as caught:
        compile(load_flow_text(text))
    return caught.value.problems


def nested(depth: int) -> str:
    """`depth` sequences, one inside the other, around one wait step."""
    lines = [HEAD + "steps:"]
    for level in range(depth):
        lines.append("  " * (level + 1) + "- sequence:")
    lines.append("  " * (depth + 1) + "- wait: {id: w, duration: 1s}")
    return "\n".join(lines) + "\n"


def many(count: int) -> str:
    steps = "".join(f"  - wait: {{id: w{i}, duration: 1s}}\n" for i in range(count))
    return HEAD + "steps:\n" + steps


# ---------------------------------------------------------------- limits


def test_a_sequence_100_deep_is_refused_naming_the_limit() -> None:
    found = refused(nested(100))
    assert len(found) == 1, found
    path, message = found[0]
    assert path == "steps[0].sequence" + "[0].sequence" * (MAX_NESTING - 1)
    assert "limit: nesting depth" in message and str(MAX_NESTING) in message


def test_nesting_up_to_the_limit_compiles() -> None:
    plan = compile(load_flow_text(nested(MAX_NESTING - 1)))
    assert [a.id for a in plan.actions()] == ["w"]
    assert refused(nested(MAX_NESTING))[0][1].startswith("nested too deeply")


def test_absurdly_deep_yaml_is_a_clear_error_not_a_crash() -> None:
    found = refused(HEAD + "steps: " + "[" * 50_000 + "]" * 50_000)
    assert len(found) == 1 and "nest" in found[0][1], found


def test_10000_steps_are_refused_quickly_naming_the_limit() -> None:
    text = many(10_000)
    started = time.monotonic()
    found = refused(text)
    took = time.monotonic() - started
    assert found == [
        (
            "steps",
            f"10000 steps: a flow has at most {MAX_STEPS} steps, parallel and sequence "
            "included (limit: number of steps)",
        )
    ]
    assert took < 5, f"refusing took {took:.1f}s"


def test_the_step_limit_counts_groups_and_allows_the_limit_itself() -> None:
    assert len(list(compile(load_flow_text(many(MAX_STEPS))).actions())) == MAX_STEPS
    grouped = (
        HEAD
        + "steps:\n  - parallel:\n"
        + "".join(f"      - wait: {{id: w{i}, duration: 1s}}\n" for i in range(MAX_STEPS))
    )
    assert "limit: number of steps" in refused(grouped)[0][1]


def test_the_step_limit_leaves_the_plan_below_temporals_payload_limit() -> None:
    """The derivation in the README: 1,000 ordinary steps stay well under MAX_PLAN_BYTES;
    MAX_STEPS of them still fit it."""

    def plan_bytes(count: int) -> int:
        text = (
            HEAD
            + "steps:\n"
            + "".join(
                f"  - migrate: {{id: migrate-{i}, command: [python, migrate.py, --db, "
                f"'${{env.DATA_DIR}}/app.db', --to, v1], undo: {{command: [python, undo.py]}}}}\n"
                for i in range(count)
            )
        )
        return len(compile(load_flow_text(text)).model_dump_json())

    assert plan_bytes(1000) < 0.6 * MAX_PLAN_BYTES
    assert plan_bytes(MAX_STEPS) < MAX_PLAN_BYTES
    assert MAX_PLAN_BYTES <= 2 * 1024 * 1024 // 2


def test_a_plan_too_large_for_a_payload_is_refused_naming_the_limit() -> None:
    big = "x" * 4000
    text = (
        HEAD
        + f"args:\n  big: {{default: {big}}}\nsteps:\n"
        + "".join(
            f"  - migrate: {{id: m{i}, command: [echo, '${{args.big}}', '${{args.big}}']}}\n"
            for i in range(200)
        )
    )
    found = refused(text)
    assert len(found) == 1 and found[0][0] == "steps", found
    assert "limit: plan size" in found[0][1] and "2 MB" in found[0][1]


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("99999999999h", "is too long: at most 366d"),
        (".inf", "must be a finite number of seconds"),
        ("-.inf", "must be a finite number of seconds"),
        (".nan", "must be a finite number of seconds"),
        ("9" * 400, "is too long: at most 366d"),
        ("'" + "9" * 400 + "s'", "at most 64 characters"),
        ("1" + "0" * 30 + "ms", "is too long: at most 366d"),
        ("367d", "is too long: at most 366d"),
    ],
)
def test_bad_durations_are_errors_with_their_path(value: str, message: str) -> None:
    text = HEAD + f"steps:\n  - wait: {{id: w, duration: {value}}}\n"
    found = refused(text)
    assert len(found) == 1, found
    assert found[0][0] == "steps[0].wait.duration"
    assert message in found[0][1]


def test_durations_up_to_the_bound_are_fine() -> None:
    assert parse_duration("366d").total_seconds() == MAX_DURATION_S
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration(2.5).total_seconds() == 2.5
    plan = compile(load_flow_text(HEAD + "steps:\n  - approve: {id: a, timeout: 30d}\n"))
    assert plan.action("a").timeout_s == 30 * 86400


# ---------------------------------------------------------------- literal secrets


@pytest.mark.parametrize(
    ("step", "path", "what"),
    [
        (
            "backup: {id: b, database: 'postgresql://app:Hunter2@db/app', to: 's3://b/'}",
            "steps[0].backup.database",
            "a password in the URL",
        ),
        (
            "notify: {id: n, webhook: 'https://hooks.example/x?token=abc123', message: hi}",
            "steps[0].notify.webhook",
            "a 'token' in the URL's query",
        ),
        (
            "notify: {id: n, webhook: 'https://hooks.example/x?channel=ops&api_key=k1', message: hi}",
            "steps[0].notify.webhook",
            "a 'api_key' in the URL's query",
        ),
        (
            "notify: {id: n, webhook: 'https://bot:tok@hooks.example/x', message: hi}",
            "steps[0].notify.webhook",
            "a password in the URL",
        ),
        (
            "check: {id: c, http: {url: 'https://ghp_abc@api.example.com/x'}}",
            "steps[0].check.http.url",
            "credentials in the URL's user part",
        ),
    ],
)
def test_a_literal_secret_is_refused_with_advice(step: str, path: str, what: str) -> None:
    spec = load_flow_text(HEAD + f"steps:\n  - {step}\n")
    found = literal_secret_problems(spec)
    assert len(found) == 1, found
    assert found[0][0] == path
    assert found[0][1].startswith(what + " is written literally")
    assert "${env.X}" in found[0][1]
    # The message never repeats the secret itself.
    assert "Hunter2" not in found[0][1] and "abc123" not in found[0][1]


@pytest.mark.parametrize(
    "step",
    [
        "backup: {id: b, database: '${env.DATABASE_URL}', to: 's3://b/'}",
        "backup: {id: b, database: 'postgresql://app:${env.DB_PASSWORD}@db/app', to: 's3://b/'}",
        "backup: {id: b, database: 'postgresql://postgres@127.0.0.1/app', to: 's3://b/'}",
        "backup: {id: b, database: 'sqlite:///data/app.db', to: 's3://b/'}",
        "notify: {id: n, webhook: 'https://hooks.example/x?token=${env.HOOK_TOKEN}', message: hi}",
        "notify: {id: n, webhook: '${env.HOOK_URL}', message: hi}",
        "notify: {id: n, webhook: 'https://hooks.example/x?channel=ops', message: hi}",
        "check: {id: c, http: {url: 'http://127.0.0.1:8080/healthz?verbose=1'}}",
        "check: {id: c, http: {url: 'http://127.0.0.1:8080/x?author=bob&monkey=1&keys=2'}}",
    ],
)
def test_secrets_by_reference_and_urls_without_secrets_are_fine(step: str) -> None:
    assert literal_secret_problems(load_flow_text(HEAD + f"steps:\n  - {step}\n")) == []
