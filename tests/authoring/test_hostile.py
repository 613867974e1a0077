"""Hostile flow files: the validator answers quickly, with a problem, never a hang or a traceback."""

from __future__ import annotations

import time

from shipflow.workflows.validation import validate_text


def test_an_alias_bomb_is_refused_at_once() -> None:
    """9^11 references to one string: walking the document naively never ends."""
    lines = ["apiVersion: shipflow/v1", "name: x", "stage: s", "description: &a0 lol"]
    lines += [f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    lines += ["steps:", "  - migrate: {id: w, command: *a6}"]
    started = time.monotonic()
    report = validate_text("\n".join(lines) + "\n")
    assert time.monotonic() - started < 5
    assert [p.render() for p in report.problems[:2]] == ["5:1: l1: unknown field", "6:1: l2: unknown field"]
    assert any(p.path.startswith("steps[0].migrate.command") for p in report.problems)


def test_ten_thousand_steps_and_deep_nesting_name_the_limit() -> None:
    head = "apiVersion: shipflow/v1\nname: big\nstage: s\nsteps:\n"
    many = head + "".join(f"  - wait: {{id: w{i}, duration: 1s}}\n" for i in range(10_000))
    started = time.monotonic()
    (problem,) = validate_text(many).problems
    assert time.monotonic() - started < 15
    assert (problem.path, problem.line, problem.column) == ("steps", 4, 1)
    assert "limit: number of steps" in problem.message
    deep = (
        head
        + "".join("  " * (i + 1) + "- sequence:\n" for i in range(100))
        + "  " * 101
        + "- wait: {id: w, duration: 1s}\n"
    )
    problems = validate_text(deep).problems
    assert problems and all("limit: nesting depth" in p.message for p in problems)
    assert problems[0].line is not None


def test_binary_and_odd_documents_are_problems_not_crashes() -> None:
    for text in ("", "null", "- a\n- b\n", "\x00\x01", "key: [unclosed", "apiVersion: 1\n"):
        report = validate_text(text)
        assert report.problems, text
        assert not report.ok
