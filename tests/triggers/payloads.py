"""Push payloads shaped like the ones GitHub and GitLab send (trimmed of fields we never read).

Field names, nesting and value formats follow the providers' documented push events,
so the parsers are tested against what arrives in production, not against our own
idea of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

ZERO = "0" * 40


def new_sha() -> str:
    return secrets.token_hex(20)


def _commit(sha: str, files: dict[str, list[str]], author: str) -> dict[str, Any]:
    return {
        "id": sha,
        "tree_id": secrets.token_hex(20),
        "distinct": True,
        "message": "change things",
        "timestamp": "2026-12-01T19:40:00+00:00",
        "url": f"https://github.com/Org/App/commit/{sha}",
        "author": {"name": "Ada Lovelace", "email": "ada@example.com", "username": author},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": files.get("added", []),
        "removed": files.get("removed", []),
        "modified": files.get("modified", []),
    }


def github_push(
    *,
    repo: str = "Org/App",
    ref: str = "refs/heads/main",
    sha: str | None = None,
    modified: list[str] | None = None,
    added: list[str] | None = None,
    removed: list[str] | None = None,
    pusher: str = "ada",
    deleted: bool = False,
) -> dict[str, Any]:
    sha = ZERO if deleted else (sha or new_sha())
    owner, name = repo.split("/")
    files = {"modified": modified or [], "added": added or [], "removed": removed or []}
    commits = [] if deleted else [_commit(sha, files, pusher)]
    return {
        "ref": ref,
        "before": new_sha(),
        "after": sha,
        "repository": {
            "id": 123456,
            "node_id": "R_kgDOAbCdEf",
            "name": name,
            "full_name": repo,
            "private": True,
            "owner": {"name": owner, "login": owner, "id": 42, "type": "Organization"},
            "html_url": f"https://github.com/{repo}",
            "clone_url": f"https://github.com/{repo}.git",
            "default_branch": "main",
        },
        "pusher": {"name": pusher, "email": f"{pusher}@example.com"},
        "sender": {"login": pusher, "id": 7, "type": "User"},
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{repo}/compare/abc...def",
        "commits": commits,
        "head_commit": commits[-1] if commits else None,
    }


def gitlab_push(
    *,
    repo: str = "org/app",
    ref: str = "refs/heads/main",
    sha: str | None = None,
    modified: list[str] | None = None,
    added: list[str] | None = None,
    user: str = "grace",
    deleted: bool = False,
) -> dict[str, Any]:
    sha = sha or new_sha()
    files = {"modified": modified or [], "added": added or [], "removed": []}
    commits = [] if deleted else [_commit(sha, files, user)]
    for commit in commits:  # GitLab's commit author has no username
        commit["author"] = {"name": "Grace Hopper", "email": "grace@example.com"}
    namespace, name = repo.split("/")
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": new_sha(),
        "after": ZERO if deleted else sha,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if deleted else sha,
        "user_id": 4,
        "user_name": "Grace Hopper",
        "user_username": user,
        "user_email": "",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": name,
            "web_url": f"https://gitlab.example.com/{repo}",
            "namespace": namespace,
            "path_with_namespace": repo,
            "default_branch": "main",
            "git_http_url": f"https://gitlab.example.com/{repo}.git",
        },
        "commits": commits,
        "total_commits_count": len(commits),
        "repository": {"name": name, "homepage": f"https://gitlab.example.com/{repo}"},
    }


def github_headers(
    body: bytes, secret: str | None, *, event: str = "push", delivery: str | None = None
) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": delivery or secrets.token_hex(16),
        "user-agent": "GitHub-Hookshot/abc123",
    }
    if secret is not None:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["x-hub-signature-256"] = f"sha256={digest}"
    return headers


def gitlab_headers(
    token: str | None, *, event: str = "Push Hook", uuid: str | None = None
) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "x-gitlab-event": event,
        "x-gitlab-event-uuid": uuid or secrets.token_hex(16),
        "user-agent": "GitLab/17.5.0",
    }
    if token is not None:
        headers["x-gitlab-token"] = token
    return headers


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()
