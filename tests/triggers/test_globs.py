"""Git trigger globs: malformed ones are refused at apply, every one matches in linear time."""

from __future__ import annotations

import time

import pytest
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.api.git import decide, parse_github_push
from shipflow.workflows.globs import GlobError, compile_glob, glob_match
from shipflow.workflows.spec import FlowError, GitMatch, GitTrigger, load_flow_text
from tests.triggers.conftest import api, apply, unique
from tests.triggers.payloads import github_push
from tests.triggers.test_hooks import flow, hook_settings, post_github


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("x[z-a]", "the range z-a is reversed"),
        ("[z-a]", "the range z-a is reversed"),
        ("src/[abc", "never closed"),
        ("", "cannot be empty"),
        ("a" * 501, "at most 500"),
    ],
)
def test_malformed_globs_are_refused_with_the_reason(pattern: str, problem: str) -> None:
    with pytest.raises(GlobError, match=problem):
        compile_glob(pattern)


def test_a_flow_with_a_malformed_glob_names_the_path() -> None:
    text = flow("web", '{repo: org/app, branches: [main], paths: ["src/**", "x[z-a]"]}')
    with pytest.raises(FlowError) as caught:
        load_flow_text(text)
    assert any(
        path.endswith("git.paths[1]")
        and "invalid glob 'x[z-a]'" in message
        and "reversed" in message
        for path, message in caught.value.problems
    ), caught.value.problems


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("[]]x", "]x", True),  # a `]` first in a class is a member
        ("[!/]", "/", False),  # a class never matches `/`
        ("a-[0-9]", "a-7", True),
        ("a-[0-9]", "a-x", False),
        ("**/**/x", "x", True),
        ("**/**/x", "a/b/x", True),
        ("src/**/*.py", "src/a.py", True),
        ("src/**/*.py", "src/a/b/c.py", True),
        ("src/**/*.py", "src/a/b/c.js", False),
        ("***", "a/b", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "aXb/c", False),
        ("a\\b", "a\\b", True),  # a backslash is an ordinary character
    ],
)
def test_glob_rules(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_nested_double_stars_against_a_deep_path_answer_at_once() -> None:
    # On the regex translation this took ~12 s (exponential backtracking on a miss).
    pattern = "**/" * 8 + "x"
    deep = "a/" * 40 + "y"
    hostile = "**/a*" * 40 + "x"
    started = time.perf_counter()
    assert not glob_match(pattern, deep)
    assert not glob_match(hostile, "a/" * 2000 + "y")
    assert glob_match(pattern, "a/" * 40 + "x")
    assert time.perf_counter() - started < 0.5


def test_a_stored_trigger_with_a_bad_glob_is_skipped_not_raised() -> None:
    # Flows applied before globs were checked can still hold one: matching says why.
    good = load_flow_text(flow("web", "{repo: org/app}"))
    bad = GitTrigger.model_construct(
        git=GitMatch.model_construct(repo="org/app", branches=["[z-a]"], paths=[], args={})
    )
    spec = good.model_copy(update={"triggers": [bad]})
    decision = decide(spec, parse_github_push(github_push(repo="org/app")))
    assert decision is not None and not decision.matched
    assert "invalid glob" in decision.reason and "reversed" in decision.reason


async def test_bad_glob_is_a_422_at_apply_and_other_flows_still_match(
    settings: Settings, temporal_client: Client
) -> None:
    settings = hook_settings(settings)
    good, bad = unique("glob-ok"), unique("glob-bad")
    async with api(settings) as http:
        refused = await http.post(
            "/flows",
            content=flow(bad, '{repo: org/app, branches: ["[z-a]"]}'),
            headers={"content-type": "application/yaml"},
        )
        assert refused.status_code == 422, refused.text
        (problem,) = [p for p in refused.json()["detail"] if "glob" in p["msg"]]
        assert problem["loc"].endswith("git.branches[0]")
        assert "reversed" in problem["msg"]
        assert (await http.get(f"/flows/{bad}")).status_code == 404

        await apply(http, flow(good, "{repo: org/app}"))
        response = await post_github(http, github_push(repo="org/app"))
        assert response.status_code == 202, response.text
        assert [r["flow"] for r in response.json()["runs"]] == [good]


async def test_a_hostile_paths_glob_does_not_block_a_push(
    settings: Settings, temporal_client: Client
) -> None:
    settings = hook_settings(settings)
    name = unique("glob-deep")
    hostile = "**/" * 8 + "x"
    async with api(settings) as http:
        await apply(http, flow(name, f'{{repo: org/deep, paths: ["{hostile}"]}}'))
        push = github_push(repo="org/deep", modified=["a/" * 40 + "y"])
        started = time.perf_counter()
        response = await post_github(http, push)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert response.json()["skipped"][0]["reason"].startswith("no changed file matches")
        assert elapsed < 2.0, f"the push took {elapsed:.1f}s"  # ~12 s of matching on main
