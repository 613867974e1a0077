"""The pure webhook rules: payload parsing, repository/branch/path matching, arguments."""

from __future__ import annotations

import pytest

from shipflow.api.git import (
    PayloadError,
    decide,
    glob_match,
    normalize_repo,
    parse_github_push,
    parse_gitlab_push,
    resolve_args,
)
from shipflow.workflows.spec import load_flow_text
from tests.triggers.payloads import ZERO, github_push, gitlab_push


def flow(*triggers: str, name: str = "web") -> str:
    lines = "\n".join(f"  - {t}" for t in triggers)
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
args: {{image: {{default: "app:1"}}}}
triggers:
{lines}
steps:
  - wait: {{id: soak, duration: 1s}}
"""


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("main", "main", True),
        ("main", "main2", False),
        ("release/*", "release/1.2", True),
        ("release/*", "release/1.2/hotfix", False),
        ("release/**", "release/1.2/hotfix", True),
        ("**", "feature/a/b", True),
        ("src/**", "src/app.py", True),
        ("src/**", "src/api/routes/hooks.py", True),
        ("src/**", "docs/src/x.md", False),
        ("src/*", "src/api/x.py", False),
        ("**/*.py", "setup.py", True),
        ("**/*.py", "a/b/c.py", True),
        ("**/*.py", "a/b/c.pyc", False),
        ("*.md", "README.md", True),
        ("*.md", "docs/README.md", False),
        ("v?.x", "v1.x", True),
        ("feat-[ab]", "feat-a", True),
        ("feat-[!ab]", "feat-a", False),
        ("feat-[!ab]", "feat-c", True),
        ("a.b", "axb", False),  # regex characters are literal
    ],
)
def test_glob(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_repo_names_compare_case_insensitively_in_any_url_form() -> None:
    for form in ("Org/App", "org/app", "https://github.com/Org/App.git", "git@github.com:org/app"):
        assert normalize_repo(form) == "org/app"


def test_github_payload_parsed() -> None:
    payload = github_push(sha="a" * 40, modified=["src/x.py"], added=["src/y.py"], pusher="ada")
    payload["commits"].append({**payload["commits"][0], "modified": ["src/x.py", "README.md"]})
    event = parse_github_push(payload)
    assert (event.repo, event.branch, event.sha, event.pusher) == (
        "Org/App",
        "main",
        "a" * 40,
        "ada",
    )
    assert event.changed == ("src/y.py", "src/x.py", "README.md")
    assert not event.deleted
    assert event.context() == {
        "sha": "a" * 40,
        "short_sha": "aaaaaaa",
        "branch": "main",
        "ref": "refs/heads/main",
        "repo": "Org/App",
        "author": "ada",
    }


@pytest.mark.parametrize("missing", ["ref", "after", "repository.full_name"])
def test_github_payload_missing_field_is_named(missing: str) -> None:
    payload = github_push()
    if missing == "repository.full_name":
        del payload["repository"]["full_name"]
    else:
        del payload[missing]
    with pytest.raises(PayloadError) as caught:
        parse_github_push(payload)
    assert caught.value.field == missing
    assert missing in str(caught.value)


def test_github_not_an_object() -> None:
    with pytest.raises(PayloadError):
        parse_github_push(["not", "a", "push"])


def test_deletions() -> None:
    assert parse_github_push(github_push(deleted=True)).deleted
    payload = github_push()
    payload["deleted"] = True
    assert parse_github_push(payload).deleted
    payload = github_push()
    payload["after"] = ZERO
    assert parse_github_push(payload).deleted
    gitlab = parse_gitlab_push(gitlab_push(deleted=True))
    assert gitlab.deleted and gitlab.sha == ZERO


def test_gitlab_payload_parsed() -> None:
    event = parse_gitlab_push(gitlab_push(repo="Org/App", sha="b" * 40, modified=["src/a.py"]))
    assert (event.provider, event.repo, event.sha, event.pusher) == (
        "gitlab",
        "Org/App",
        "b" * 40,
        "grace",
    )
    assert event.changed == ("src/a.py",)
    payload = gitlab_push()
    del payload["project"]["path_with_namespace"]
    with pytest.raises(PayloadError, match=r"project\.path_with_namespace"):
        parse_gitlab_push(payload)
    payload = gitlab_push()
    payload["checkout_sha"] = None
    del payload["after"]
    with pytest.raises(PayloadError, match="after"):
        parse_gitlab_push(payload)


def test_branch_and_repo_matching() -> None:
    spec = load_flow_text(flow('git: {repo: org/app, branches: [main, "release/*"]}'))
    assert decide(spec, parse_github_push(github_push(repo="ORG/APP"))).matched  # type: ignore[union-attr]
    release = parse_github_push(github_push(ref="refs/heads/release/2.0"))
    assert decide(spec, release).matched  # type: ignore[union-attr]
    feature = decide(spec, parse_github_push(github_push(ref="refs/heads/feature/x")))
    assert feature is not None and not feature.matched
    assert "feature/x" in feature.reason
    # Another repository: not a candidate at all, so not reported.
    assert decide(spec, parse_github_push(github_push(repo="org/other"))) is None


def test_default_branch_is_main() -> None:
    spec = load_flow_text(flow("git: {repo: org/app}"))
    assert decide(spec, parse_github_push(github_push())).matched  # type: ignore[union-attr]
    dev = decide(spec, parse_github_push(github_push(ref="refs/heads/dev")))
    assert dev is not None and not dev.matched


def test_tags_never_match_a_branch_trigger() -> None:
    spec = load_flow_text(flow('git: {repo: org/app, branches: ["**"]}'))
    tag = decide(spec, parse_github_push(github_push(ref="refs/tags/v1.0")))
    assert tag is not None and not tag.matched
    assert "not a branch" in tag.reason
    assert decide(spec, parse_github_push(github_push(ref="refs/heads/any/thing"))).matched  # type: ignore[union-attr]


def test_paths_filter() -> None:
    spec = load_flow_text(flow('git: {repo: org/app, paths: ["src/**", "Dockerfile"]}'))
    nested = parse_github_push(github_push(modified=["README.md", "src/api/deep/x.py"]))
    assert decide(spec, nested).matched  # type: ignore[union-attr]
    assert decide(spec, parse_github_push(github_push(removed=["Dockerfile"]))).matched  # type: ignore[union-attr]
    docs = decide(spec, parse_github_push(github_push(modified=["docs/src/index.md"])))
    assert docs is not None and not docs.matched
    assert "no changed file" in docs.reason
    nothing = decide(spec, parse_github_push(github_push()))
    assert nothing is not None and not nothing.matched


def test_first_matching_trigger_wins_and_all_reasons_are_kept() -> None:
    spec = load_flow_text(
        flow(
            'git: {repo: org/app, branches: [prod], args: {image: "p"}}',
            'cron: "0 3 * * *"',
            'git: {repo: org/app, branches: [main], args: {image: "m"}}',
        )
    )
    decision = decide(spec, parse_github_push(github_push()))
    assert decision is not None and decision.trigger_index == 2
    assert decision.trigger is not None and decision.trigger.args == {"image": "m"}
    miss = decide(spec, parse_github_push(github_push(ref="refs/heads/dev")))
    assert miss is not None and len(miss.reasons) == 2


def test_resolve_args() -> None:
    context = parse_github_push(github_push(sha="c" * 40)).context()
    args = resolve_args(
        {"image": "registry/app:${git.short_sha}", "ref": "${ git.branch }@x"}, context
    )
    assert args == {"image": "registry/app:ccccccc", "ref": "main@x"}
    with pytest.raises(ValueError, match=r"git\.nope"):
        resolve_args({"image": "${git.nope}"}, context)
    with pytest.raises(ValueError, match="only"):
        resolve_args({"image": "${env.SECRET}"}, context)
