"""The groups pages in a real browser: what each role sees and does, and that a secret
value never reaches the page (its DOM, its form fields), whoever looks.

One test on the session's stack: groups written over the API, a deploy that uses them,
then the pages as a viewer (no edit controls, with the reason) and as an admin (set and
unset a key, create a group), and the run page's deploy step naming the group versions.
"""

from __future__ import annotations

import json
import uuid

from shipflow.activities.core import group_crypto
from tests.browser.cdp import Page
from tests.browser.conftest import Stack, login, shot
from tests.helpers import free_port, wait_until_sync
from tests.local.support import demo_service

SECRET = "grp-Secret-" + uuid.uuid4().hex
SECRET_2 = "grp-Second-" + uuid.uuid4().hex
#: Everything the page holds: its markup and the values of its form fields.
DOM = "document.documentElement.outerHTML + [...document.querySelectorAll('input, textarea')].map(i => i.value).join('|')"


def no_secret_in(page: Page) -> None:
    seen = page.evaluate(DOM)
    assert SECRET not in seen and SECRET_2 not in seen


def test_groups_pages_by_role_and_the_versions_a_deploy_used(page: Page, stack: Stack) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(stack.settings))
    tag = uuid.uuid4().hex[:6]
    secret, config, made = f"db-{tag}", f"flags-{tag}", f"new-{tag}"
    stage, service, flow = f"gs-{tag}", f"g{tag}", f"groups-{tag}"
    with stack.http("admin") as http:
        answer = http.put(
            f"/groups/{secret}",
            json={
                "kind": "secret",
                "values": {"DB_PASSWORD": SECRET, "OLD_TOKEN": SECRET + "x"},
                "tags": [f"t{tag}"],
            },
        )
        assert answer.status_code == 201, answer.text
        answer = http.put(
            f"/groups/{config}",
            json={"kind": "config", "values": {"MODE": "fast"}, "stages": [stage]},
        )
        assert answer.status_code == 201, answer.text
    spec = {**demo_service(free_port(), period="0.1s"), "env_from": [secret, config]}
    stack.apply(
        f"apiVersion: shipflow/v1\nname: {flow}\nstage: {stage}\n"
        f"target: {{kind: local, services: {{{service}: {json.dumps(spec)}}}}}\n"
        f"steps:\n  - deploy: {{id: web, service: {service}, image: v1}}\n"
    )
    run_id = stack.start_run(flow, {})
    wait_until_sync(
        lambda: stack.run(run_id)["state"] not in ("pending", "queued", "running"),
        timeout=60,
        what="the deploy",
    )
    assert stack.run(run_id)["state"] == "succeeded", stack.run(run_id)

    # A viewer: the list and a group's keys, config values, no value of a secret, and
    # every edit control disabled with the role it needs.
    login(page, stack, "viewer", "/groups")
    row = f'#groups tr[data-group="{secret}"]'
    page.wait(f"document.querySelector('{row}')")
    assert (
        page.text(f"{row} .version") == "v1"
        and "secret" in page.text(row)
        and f"t{tag}" in page.text(row)
    )
    assert f"stages: {stage}" in page.text(f'#groups tr[data-group="{config}"] .restriction')
    assert page.evaluate("document.querySelector('#new-group [data-submit]').disabled") is True
    assert "needs the admin role; you are viewer" in page.text("#new-group")
    no_secret_in(page)
    shot(page, "groups-list-viewer")
    page.goto(f"{stack.url}/groups/{secret}")
    page.wait("document.querySelector('#keys tr[data-key=DB_PASSWORD]')")
    assert page.text("#keys tr[data-key=DB_PASSWORD] .value") == "(secret)"
    assert page.evaluate(
        "[...document.querySelectorAll('#keys [data-unset], #set-key [data-submit]')].every(b => b.disabled)"
    )
    page.wait("document.querySelector('#audit').innerText.includes('needs the operator role')")
    no_secret_in(page)
    page.goto(f"{stack.url}/groups/{config}")
    page.wait("document.querySelector('#keys tr[data-key=MODE]')")
    assert page.text("#keys tr[data-key=MODE] .value") == "fast"  # config values are for everyone

    # An admin sets a secret key and unsets another from the page: new versions, audited.
    login(page, stack, "admin", f"/groups/{secret}")
    page.wait("document.querySelector('#set-key [data-submit]:not([disabled])')")
    assert page.evaluate("document.querySelector('#set-key [name=value]').type") == "password"
    page.fill("#set-key [name=key]", "API_KEY")
    page.fill("#set-key [name=value]", SECRET_2)
    page.click("#set-key [data-submit]")
    page.wait("document.querySelector('#group-version').innerText.startsWith('v2')")
    assert page.text("#keys tr[data-key=API_KEY] .value") == "(secret)"
    no_secret_in(page)
    page.click("#keys [data-unset=OLD_TOKEN]")
    page.wait("document.querySelector('#group-version').innerText.startsWith('v3')")
    assert not page.evaluate("document.querySelector('#keys tr[data-key=OLD_TOKEN]')")
    # created, the deploy's read (inject), set, unset
    page.wait("document.querySelectorAll('#audit-trail tbody tr').length === 4")
    trail = page.text("#audit-trail")
    assert "admin-bot" in trail and "unset" in trail and "OLD_TOKEN" in trail
    assert "inject" in trail and f"run {run_id} step" in trail
    assert page.evaluate("document.querySelectorAll('#versions tbody tr').length") == 3
    no_secret_in(page)
    shot(page, "group-secret-admin")
    with stack.http("admin") as http:  # the page really wrote it
        revealed = http.post(f"/groups/{secret}/reveal", json={"key": "API_KEY"}).json()
        assert revealed == {"group": secret, "version": 3, "key": "API_KEY", "value": SECRET_2}
    page.goto(f"{stack.url}/groups/{secret}?version=1")
    page.wait("document.querySelector('#group-version').innerText.includes('older version')")
    assert page.evaluate(
        "!!document.querySelector('#keys tr[data-key=OLD_TOKEN]') && !document.querySelector('#set-key')"
    )

    # An admin creates a group from the list page; a bad name is the API's 422, shown.
    page.goto(f"{stack.url}/groups")
    page.wait("document.querySelector('#new-group [data-submit]:not([disabled])')")
    page.fill("#new-group [name=name]", "Bad_Name")
    page.click("#new-group [data-submit]")
    page.wait("document.querySelector('#new-group .form-error').innerText.includes('name')")
    page.fill("#new-group [name=name]", made)
    page.fill("#new-group [name=tags]", f"t{tag}, api")
    page.fill("#new-group [name=key]", "LEVEL")
    page.fill("#new-group [name=value]", "debug")
    page.click("#new-group [data-submit]")
    page.wait(
        f"location.pathname === '/groups/{made}' && document.querySelector('#keys tr[data-key=LEVEL]')"
    )
    assert page.text("#keys tr[data-key=LEVEL] .value") == "debug" and "api" in page.text(".group")
    shot(page, "group-created")

    # The run page: the deploy step names the group versions the service got.
    page.goto(f"{stack.url}/runs/{run_id}")
    page.wait("document.querySelector('#node-web')")
    page.click("#node-web")
    page.wait("document.querySelector('.groups-used')")
    used = page.text(".groups-used")
    assert f"{secret} v1" in used and f"{config} v1" in used
    link = page.evaluate(
        f"document.querySelector('.groups-used [data-group=\"{secret}\"] a').getAttribute('href')"
    )
    assert link == f"/groups/{secret}?version=1"
    no_secret_in(page)
    page.evaluate("document.querySelector('.groups-used').scrollIntoView()")
    shot(page, "run-deploy-groups")
    page.resize(800, 900)
    page.goto(f"{stack.url}/groups/{secret}")
    page.wait("document.querySelector('#keys')")
    page.wait("document.documentElement.scrollWidth <= 800")
    shot(page, "group-secret-800")
    page.resize(1280, 900)
