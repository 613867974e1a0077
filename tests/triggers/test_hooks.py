"""`POST /hooks/github` and `/hooks/gitlab` through the real app, Temporal and database."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run, WebhookDelivery
from shipflow.workflows.release import MEMO_KEY
from tests.helpers import HttpSink, new_worker, wait_until
from tests.triggers.conftest import api, apply, unique
from tests.triggers.payloads import (
    encode,
    github_headers,
    github_push,
    gitlab_headers,
    gitlab_push,
    new_sha,
)

SECRET = "It's a Secret to Everybody"
TOKEN = "gl-token-123"


def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"github_secret": SecretStr(SECRET), "gitlab_token": SecretStr(TOKEN)}
    )


def flow(name: str, git: str, *, duration: str = "100ms") -> str:
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
args:
  image: {{default: "registry/app:latest"}}
triggers:
  - git: {git}
steps:
  - wait: {{id: soak, duration: {duration}}}
"""


def runs_of(http, flow_name: str) -> list[Run]:  # type: ignore[no-untyped-def]
    with Session(http.app.state.engine) as session:
        return list(session.exec(select(Run).where(Run.flow == flow_name)).all())


async def exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def post_github(http, payload, *, secret=SECRET, event="push", delivery=None):  # type: ignore[no-untyped-def]
    body = encode(payload)
    headers = github_headers(body, secret, event=event, delivery=delivery)
    return await http.post("/hooks/github", content=body, headers=headers)


async def test_github_signature_is_required(settings: Settings, temporal_client: Client) -> None:
    name = unique("sig")
    payload = github_push()
    body = encode(payload)
    async with api(settings) as http:  # no secret configured
        await apply(http, flow(name, "{repo: Org/App}"))
        refused = await http.post(
            "/hooks/github", content=body, headers=github_headers(body, SECRET)
        )
        assert refused.status_code == 503
        assert refused.json()["detail"] == "github webhook secret not configured"
    async with api(hook_settings(settings)) as http:
        missing = await http.post("/hooks/github", content=body, headers=github_headers(body, None))
        assert missing.status_code == 401
        wrong = await http.post(
            "/hooks/github", content=body, headers=github_headers(body, "not the secret")
        )
        assert wrong.status_code == 401
        # A valid signature of another body: the payload was tampered with.
        tampered = github_headers(body + b" ", SECRET)
        assert (await http.post("/hooks/github", content=body, headers=tampered)).status_code == 401
        assert SECRET not in missing.text + wrong.text
        assert runs_of(http, name) == []
        with Session(http.app.state.engine) as session:
            assert session.exec(select(WebhookDelivery)).all() == []
    assert not await exists(temporal_client, f"{name}-{payload['after'][:12]}")


async def test_github_ping_other_events_and_malformed(settings: Settings) -> None:
    async with api(hook_settings(settings)) as http:
        ping = await post_github(
            http, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping"
        )
        assert (ping.status_code, ping.json()) == (200, {"ok": True})
        issue = await post_github(http, {"action": "opened"}, event="issues")
        assert issue.status_code == 202
        assert "issues" in issue.json()["message"] and issue.json()["runs"] == []

        not_json = await http.post(
            "/hooks/github", content=b"{nope", headers=github_headers(b"{nope", SECRET)
        )
        assert not_json.status_code == 400
        assert "not JSON" in not_json.json()["detail"]
        # A hook set up with content type "application/x-www-form-urlencoded": same payload.
        form = urlencode({"payload": json.dumps(github_push(repo="org/nobody"))}).encode()
        headers = {
            **github_headers(form, SECRET),
            "content-type": "application/x-www-form-urlencoded",
        }
        assert (await http.post("/hooks/github", content=form, headers=headers)).status_code == 200
        broken = b"payload=%7Bnot-json"
        headers = {
            **github_headers(broken, SECRET),
            "content-type": "application/x-www-form-urlencoded",
        }
        assert (
            await http.post("/hooks/github", content=broken, headers=headers)
        ).status_code == 400
        for field in ("ref", "after", "repository.full_name"):
            payload = github_push()
            if field == "repository.full_name":
                del payload["repository"]["full_name"]
            else:
                del payload[field]
            bad = await post_github(http, payload)
            assert bad.status_code == 400
            assert field in bad.json()["detail"]


async def test_github_push_starts_matching_flows_once_per_commit(
    settings: Settings, pg_url: str, temporal_client: Client
) -> None:
    settings = hook_settings(settings).model_copy(update={"database_url": SecretStr(pg_url)})
    match, other_branch, other_path, other_repo = (
        unique(p) for p in ("web", "rel", "docs", "else")
    )
    sha = new_sha()
    async with api(settings) as http:
        args = '{image: "registry/app:${git.short_sha}"}'
        await apply(http, flow(match, f'{{repo: org/app, paths: ["src/**"], args: {args}}}'))
        await apply(http, flow(other_branch, '{repo: Org/App, branches: ["release/*"]}'))
        await apply(http, flow(other_path, '{repo: Org/App, paths: ["docs/**"]}'))
        await apply(http, flow(other_repo, "{repo: org/elsewhere}"))
        payload = github_push(sha=sha, modified=["src/api/deep/main.py"], pusher="ada")

        first = await post_github(http, payload, delivery="delivery-1")
        assert first.status_code == 202, first.text
        body = first.json()
        run_id = f"{match}-{sha[:12]}"
        assert [(r["flow"], r["run_id"]) for r in body["runs"]] == [(match, run_id)]
        assert body["runs"][0]["status_url"].endswith(f"/runs/{run_id}")
        assert body["runs"][0]["ui_url"].endswith(f"/workflows/{run_id}")
        skipped = {s["flow"]: s["reason"] for s in body["skipped"]}
        assert set(skipped) == {other_branch, other_path}  # other repos are not candidates
        assert "release/*" in skipped[other_branch]
        assert "docs/**" in skipped[other_path]

        (row,) = runs_of(http, match)
        assert (row.run_id, row.trigger, row.triggered_by) == (run_id, "github", "ada")
        assert row.args == {"image": f"registry/app:{sha[:7]}"}
        assert runs_of(http, other_branch) == [] and runs_of(http, other_path) == []
        description = await temporal_client.get_workflow_handle(run_id).describe()
        memo = await description.memo_value(MEMO_KEY)
        assert memo["args"] == {"image": f"registry/app:{sha[:7]}"}
        assert memo["triggered_by"] == "ada"

        # The same delivery again (GitHub's "redeliver"): the same runs, nothing new.
        again = await post_github(http, payload, delivery="delivery-1")
        assert again.status_code == 202
        assert [r["run_id"] for r in again.json()["runs"]] == [run_id]
        # The same commit under a new delivery id (a second hook, a re-push): joins the run.
        dup = await post_github(http, payload, delivery="delivery-2")
        assert [r["run_id"] for r in dup.json()["runs"]] == [run_id]
        after = await temporal_client.get_workflow_handle(run_id).describe()
        assert after.run_id == description.run_id  # one workflow execution, not two
        assert len(runs_of(http, match)) == 1
        count = await temporal_client.count_workflows(f'ShipflowFlow = "{match}"')
        assert count.count == 1

        # A burst of deliveries of one new commit, all at once: still one run.
        burst = github_push(sha=new_sha(), modified=["src/x.py"])
        answers = await asyncio.gather(*(post_github(http, burst) for _ in range(4)))
        ids = {r["run_id"] for a in answers for r in a.json()["runs"]}
        assert [a.status_code for a in answers] == [202] * 4
        assert ids == {f"{match}-{burst['after'][:12]}"}
        assert len(runs_of(http, match)) == 2


async def test_deleted_branches_tags_and_no_match(settings: Settings) -> None:
    name = unique("del")
    async with api(hook_settings(settings)) as http:
        await apply(http, flow(name, '{repo: org/app, branches: ["**"]}'))
        deleted = await post_github(http, github_push(deleted=True))
        assert deleted.status_code == 200
        assert deleted.json()["runs"] == [] and "deleted" in deleted.json()["message"]
        flagged = github_push()
        flagged["deleted"] = True  # GitHub's flag, whatever `after` says
        assert (await post_github(http, flagged)).json()["runs"] == []

        tag = await post_github(http, github_push(ref="refs/tags/v1.0.0"))
        assert tag.status_code == 200
        assert tag.json()["runs"] == []
        assert [s["flow"] for s in tag.json()["skipped"]] == [name]
        assert "not a branch" in tag.json()["skipped"][0]["reason"]

        nobody = await post_github(http, github_push(repo="org/unknown-repo"))
        assert nobody.status_code == 200
        assert nobody.json()["runs"] == [] and nobody.json()["skipped"] == []
        assert "no flow matched" in nobody.json()["message"]
        assert runs_of(http, name) == []


GIT_FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: dev
args:
  image: {{default: "app:latest"}}
triggers:
  - git: {{repo: org/app, args: {{image: "app:${{git.short_sha}}"}}}}
steps:
  - notify:
      id: tell
      webhook: "{sink}/released"
      message: "${{args.image}} from ${{git.repo}}@${{git.branch}} ${{git.sha}} by ${{git.author}}"
"""


async def test_gitlab_push_runs_end_to_end(settings: Settings, temporal_client: Client) -> None:
    settings = hook_settings(settings)
    name = unique("gl")
    sha = new_sha()
    payload = gitlab_push(repo="org/app", sha=sha, modified=["src/main.py"], user="grace")
    body = encode(payload)
    with HttpSink() as sink:
        async with api(settings) as http, new_worker(temporal_client, settings):
            await apply(http, GIT_FLOW.format(name=name, sink=sink.url))
            for token in (None, "wrong-token"):
                refused = await http.post(
                    "/hooks/gitlab", content=body, headers=gitlab_headers(token)
                )
                assert refused.status_code == 401
            assert runs_of(http, name) == []
            mr = await http.post(
                "/hooks/gitlab",
                content=body,
                headers=gitlab_headers(TOKEN, event="Merge Request Hook"),
            )
            assert mr.status_code == 202 and mr.json()["runs"] == []

            started = await http.post("/hooks/gitlab", content=body, headers=gitlab_headers(TOKEN))
            assert started.status_code == 202, started.text
            run_id = f"{name}-{sha[:12]}"
            assert [r["run_id"] for r in started.json()["runs"]] == [run_id]
            # Without an event UUID the delivery is keyed by the commit: still one run.
            headers = gitlab_headers(TOKEN)
            del headers["x-gitlab-event-uuid"]
            again = await http.post("/hooks/gitlab", content=body, headers=headers)
            assert [r["run_id"] for r in again.json()["runs"]] == [run_id]

            handle = temporal_client.get_workflow_handle(run_id)
            await handle.result()
            assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

            async def listed() -> dict | None:  # type: ignore[type-arg]
                rows = (await http.get("/runs", params={"flow": name})).json()
                return rows[0] if rows and rows[0]["state"] == "succeeded" else None

            row = await wait_until(listed, timeout=15)
            assert (row["run_id"], row["trigger"], row["triggered_by"]) == (
                run_id,
                "gitlab",
                "grace",
            )
            assert row["args"] == {"image": f"app:{sha[:7]}"}
            detail = (await http.get(f"/runs/{run_id}")).json()
            assert detail["state"] == "succeeded" and detail["trigger"] == "gitlab"
            # The run's steps saw the push: `${git.*}` resolved in the plan.
            (sent,) = sink.received
            text = json.dumps(sent["body"])
            assert f"app:{sha[:7]} from org/app@main {sha} by grace" in text


async def test_gitlab_token_not_configured(settings: Settings) -> None:
    async with api(settings) as http:
        body = encode(gitlab_push())
        refused = await http.post("/hooks/gitlab", content=body, headers=gitlab_headers(TOKEN))
        assert refused.status_code == 503
        assert refused.json()["detail"] == "gitlab webhook token not configured"


@pytest.mark.parametrize("field", ["ref", "project"])
async def test_gitlab_malformed(settings: Settings, field: str) -> None:
    async with api(hook_settings(settings)) as http:
        payload = gitlab_push()
        del payload[field]
        bad = await http.post(
            "/hooks/gitlab", content=encode(payload), headers=gitlab_headers(TOKEN)
        )
        assert bad.status_code == 400
        assert field in bad.json()["detail"]


async def test_flows_that_cannot_compile_for_a_push_are_skipped(settings: Settings) -> None:
    typo, required = unique("typo"), unique("req")
    async with api(hook_settings(settings)) as http:
        await apply(http, flow(typo, '{repo: org/app, args: {image: "app:${git.shortsha}"}}'))
        await apply(
            http,
            flow(required, "{repo: org/app}").replace(
                'image: {default: "registry/app:latest"}', "image: {description: no default}"
            ),
        )
        answer = await post_github(http, github_push())
        assert answer.status_code == 200
        skipped = {s["flow"]: s["reason"] for s in answer.json()["skipped"]}
        assert "git.shortsha" in skipped[typo] and "short_sha" in skipped[typo]
        assert "args.image" in skipped[required] and "required" in skipped[required]
        assert runs_of(http, typo) == [] and runs_of(http, required) == []


async def test_temporal_refusing_the_start_is_a_503_and_the_retry_starts_it(
    settings: Settings, temporal_client: Client
) -> None:
    settings = hook_settings(settings)
    name = unique("down")
    payload = github_push(modified=["src/a.py"])
    run_id = f"{name}-{payload['after'][:12]}"
    broken = settings.model_copy(update={"temporal_namespace": "no-such-namespace"})
    async with api(settings) as http:
        await apply(http, flow(name, "{repo: org/app}"))
    async with api(broken) as http:  # same database, a namespace Temporal does not have
        refused = await post_github(http, payload, delivery="retry-me")
        assert refused.status_code == 503
        assert "could not start the run" in refused.json()["detail"]
        (row,) = runs_of(http, name)
        assert row.state == "failed" and row.error and "could not start" in row.error
        with Session(http.app.state.engine) as session:
            assert session.get(WebhookDelivery, "retry-me") is None  # so a retry is handled
    async with api(settings) as http:  # same database, Temporal reachable again
        retried = await post_github(http, payload, delivery="retry-me")
        assert retried.status_code == 202
        assert [r["run_id"] for r in retried.json()["runs"]] == [run_id]
        (row,) = runs_of(http, name)
        assert (row.state, row.error) == ("pending", None)
    assert await exists(temporal_client, run_id)


async def test_redelivery_after_the_flow_is_applied_starts_it(settings: Settings) -> None:
    name = unique("later")
    repo = f"org/{name}"
    payload = github_push(repo=repo)
    async with api(hook_settings(settings)) as http:
        early = await post_github(http, payload, delivery="try-the-hook")
        assert early.status_code == 200 and early.json()["runs"] == []
        await apply(http, flow(name, f"{{repo: {repo}}}"))
        redelivered = await post_github(http, payload, delivery="try-the-hook")
        assert redelivered.status_code == 202, redelivered.text
        assert [r["flow"] for r in redelivered.json()["runs"]] == [name]
        with Session(http.app.state.engine) as session:
            seen = session.get(WebhookDelivery, "try-the-hook")
            assert seen is not None and seen.runs == [f"{name}-{payload['after'][:12]}"]
