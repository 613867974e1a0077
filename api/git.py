"""Git push webhooks, the pure part: parse GitHub and GitLab push payloads, match flows.

Nothing here does I/O, so every rule (which repository, which branch, which changed
files start which flow, and with which arguments) is unit-tested without a server.
`shipflow.api.routes.hooks` does the signature checks, the database and the starting.

Glob rules, for `branches` and `paths`, are those of GitHub Actions filters (see
`shipflow.workflows.globs`: validated when a flow is applied, matched in linear time). Tags
(`refs/tags/...`) never match a branch trigger.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipflow.api.hostile import bad_text
from shipflow.workflows.globs import GlobError, glob_match
from shipflow.workflows.plan import TEMPLATE
from shipflow.workflows.spec import FlowSpec, GitMatch, GitTrigger

ZERO_SHA = "0" * 40
SHORT_SHA = 7


class PayloadError(ValueError):
    """A webhook payload lacks a field we need (400). `field` is its dotted path."""

    def __init__(self, field: str, message: str | None = None):
        self.field = field
        super().__init__(message or f"malformed push payload: missing or invalid {field!r}")


@dataclass(frozen=True)
class PushEvent:
    """What a push says, whatever the provider: the only input of the matching rules."""

    provider: str
    repo: str
    ref: str
    sha: str
    pusher: str
    deleted: bool = False
    changed: tuple[str, ...] = ()

    @property
    def branch(self) -> str | None:
        """The branch pushed to, or None for a tag or any other ref."""
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def short_sha(self) -> str:
        return self.sha[:SHORT_SHA]

    def context(self) -> dict[str, str]:
        """The `git` namespace a triggered run compiles with (`${git.short_sha}`...)."""
        return {
            "sha": self.sha,
            "short_sha": self.short_sha,
            "branch": self.branch or "",
            "ref": self.ref,
            "repo": self.repo,
            "author": self.pusher,
        }


# ------------------------------------------------------------------ parsing


def _get(payload: Mapping[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _required_text(payload: Mapping[str, Any], path: str) -> str:
    value = _get(payload, path)
    if not isinstance(value, str) or not value:
        raise PayloadError(path)
    return _storable(value, path)


def _storable(value: str, path: str) -> str:
    """`value`, if it can be stored and sent on (no NUL, valid Unicode)."""
    why = bad_text(value)
    if why:
        raise PayloadError(path, f"malformed push payload: {path!r} {why}")
    return value


def _changed_files(commits: Any) -> tuple[str, ...]:
    """Every file added, modified or removed by the pushed commits, first seen first."""
    seen: dict[str, None] = {}
    if not isinstance(commits, list):
        return ()
    for commit in commits:
        if not isinstance(commit, Mapping):
            continue
        for key in ("added", "modified", "removed"):
            files = commit.get(key)
            if isinstance(files, list):
                for name in files:
                    if isinstance(name, str):
                        seen.setdefault(name, None)
    return tuple(seen)


def parse_github_push(payload: Any) -> PushEvent:
    """A GitHub `push` event body (already JSON-decoded).

    Raises:
        PayloadError: `ref`, `after` or `repository.full_name` is missing.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("", "malformed push payload: expected a JSON object")
    ref = _required_text(payload, "ref")
    after = _required_text(payload, "after")
    repo = _required_text(payload, "repository.full_name")
    pusher = (
        _get(payload, "pusher.name")
        or _get(payload, "sender.login")
        or _get(payload, "head_commit.author.username")
        or "github"
    )
    return PushEvent(
        provider="github",
        repo=repo,
        ref=ref,
        sha=after,
        pusher=_storable(str(pusher), "pusher.name"),
        deleted=bool(payload.get("deleted")) or after == ZERO_SHA,
        changed=_changed_files(payload.get("commits")),
    )


def parse_gitlab_push(payload: Any) -> PushEvent:
    """A GitLab `Push Hook` (or `Tag Push Hook`) body (already JSON-decoded).

    GitLab sets `checkout_sha` to null when a branch is deleted; `after` is then zeros.

    Raises:
        PayloadError: `ref`, `after`/`checkout_sha` or `project.path_with_namespace` is missing.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("", "malformed push payload: expected a JSON object")
    ref = _required_text(payload, "ref")
    checkout = payload.get("checkout_sha")
    after = payload.get("after")
    sha = checkout if isinstance(checkout, str) and checkout else after
    if not isinstance(sha, str) or not sha:
        raise PayloadError("after")
    repo = _required_text(payload, "project.path_with_namespace")
    pusher = payload.get("user_username") or payload.get("user_name") or "gitlab"
    return PushEvent(
        provider="gitlab",
        repo=repo,
        ref=ref,
        sha=_storable(sha, "after"),
        pusher=_storable(str(pusher), "user_username"),
        deleted=after == ZERO_SHA or (checkout is None and "checkout_sha" in payload),
        changed=_changed_files(payload.get("commits")),
    )


# ------------------------------------------------------------------ matching


def normalize_repo(repo: str) -> str:
    """`org/app`, `https://github.com/org/app.git`, `git@github.com:org/app` -> `org/app`."""
    text = repo.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[-1]
    elif text.startswith("git@") and ":" in text:
        text = text.split(":", 1)[1]
    return text.removesuffix(".git").strip("/")


@dataclass
class Decision:
    """Whether one flow runs for a push: the trigger that matched, or why none did."""

    flow: str
    trigger_index: int | None = None
    trigger: GitMatch | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return self.trigger is not None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _mismatch(match: GitMatch, event: PushEvent) -> str | None:
    """Why `match` (whose repository is the pushed one) does not fire, or None when it does."""
    branch = event.branch
    if branch is None:
        return f"{event.ref} is not a branch"
    if not any(glob_match(pattern, branch) for pattern in match.branches):
        return f"branch {branch!r} matches none of {match.branches}"
    if match.paths:
        if not event.changed:
            return "the push lists no changed files for the paths filter"
        if not any(glob_match(p, name) for p in match.paths for name in event.changed):
            return f"no changed file matches {match.paths}"
    return None


def decide(flow: FlowSpec, event: PushEvent) -> Decision | None:
    """The first git trigger of `flow` that fires for `event`.

    Returns:
        None when no git trigger of the flow names the pushed repository (the flow is
        not a candidate, so it is not reported as skipped); else a Decision, matched,
        or with the reason each trigger of that repository did not fire.
    """
    repo = normalize_repo(event.repo)
    triggers = [
        (i, t.git)
        for i, t in enumerate(flow.triggers)
        if isinstance(t, GitTrigger) and normalize_repo(t.git.repo) == repo
    ]
    if not triggers:
        return None
    decision = Decision(flow=flow.name)
    for index, match in triggers:
        try:
            why = _mismatch(match, event)
        except GlobError as e:  # stored before globs were checked at apply: skip, say why
            why = f"the trigger has an invalid glob: {e}"
        if why is None:
            return Decision(flow=flow.name, trigger_index=index, trigger=match)
        decision.reasons.append(why)
    return decision


def resolve_args(args: Mapping[str, str], context: Mapping[str, str]) -> dict[str, str]:
    """A git trigger's `args` with `${git.X}` filled in from the push.

    Raises:
        ValueError: an arg uses another namespace or an unknown git variable.
    """
    out: dict[str, str] = {}
    for name, text in args.items():

        def replace(m: re.Match[str], name: str = name) -> str:
            namespace, key = m.group(1), m.group(2)
            if namespace != "git":
                raise ValueError(
                    f"args.{name}: only ${{git.X}} can be used in a git trigger's args, "
                    f"not ${{{namespace}.{key}}}"
                )
            if key not in context:
                known = ", ".join(sorted(context))
                raise ValueError(f"args.{name}: ${{git.{key}}} is unknown (known: {known})")
            return context[key]

        out[name] = TEMPLATE.sub(replace, text)
    return out
