"""Schemathesis over the whole OpenAPI document: no 5xx, no response that breaks the schema.

The API is served for real (uvicorn on loopback, in a thread with its own event loop)
with a real Temporal dev server and a fresh PostgreSQL database behind it, tokens
configured and webhook secrets set. Every generated request carries an admin token;
webhook requests get a valid signature (GitHub) or token (GitLab) computed over the exact
bytes sent, so generated pushes reach the payload parsing and matching, not just the
signature check. Bounded by `max_examples` per operation (about a minute on 2 cores).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from tests.api.conftest import TOKENS, bearer, token_settings
from tests.conftest import PG_ADMIN_URL, _pg_admin
from tests.local.support import RuntimeProcess

GITHUB_SECRET = "fuzz-github-secret"
GITLAB_TOKEN = "fuzz-gitlab-token"
EXAMPLES = 60  # per operation, positive and negative cases mixed: ~30 s in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

FLOW = """
apiVersion: shipflow/v1
name: fuzz
stage: fuzz
args: {image: {default: "app:1"}}
triggers:
  - git: {repo: org/app, branches: ["**"]}
steps:
  - wait: {id: soak, duration: 1h}
"""


@dataclass
class Served:
    url: str
    http: requests.Session
    #: Path parameters that exist (a flow, its git trigger, a run), so that generated
    #: requests also reach the code behind the 404s.
    known: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_database() -> Iterator[str]:
    name = f"sf_fuzz_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def served(
    temporal_address: str, fuzz_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    data_dir = Path(tmp_path_factory.mktemp("fuzz")) / "shipflow"
    # A real local runtime (with no services) for the routes that ask it, e.g. promote.
    runtime = RuntimeProcess(data_dir / "runtime")
    runtime.start()
    base = Settings(
        temporal_address=temporal_address,
        data_dir=data_dir,
        task_queue=f"tq-fuzz-{uuid.uuid4().hex[:8]}",
        database_url=SecretStr(fuzz_database),
        github_secret=SecretStr(GITHUB_SECRET),
        gitlab_token=SecretStr(GITLAB_TOKEN),
        runtime_url=runtime.url,
    )
    app = create_app(token_settings(base))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)  # another thread's loop: nothing to await on here
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        http = requests.Session()
        url = f"http://127.0.0.1:{port}"
        applied = http.post(
            url + "/flows",
            data=FLOW,
            headers={"content-type": "application/yaml", **bearer("admin")},
            timeout=30,
        )
        assert applied.status_code in (200, 201), applied.text
        started = http.post(url + "/flows/fuzz/runs", json={}, headers=bearer("operator"))
        assert started.status_code == 202, started.text
        known = {"name": "fuzz", "sid": "0", "run_id": started.json()["run_id"]}
        yield Served(url, http, known)
    finally:
        server.should_exit = True
        thread.join(30)
        runtime.cleanup()


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


def _operations() -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document (building the app connects to nothing)."""
    document = create_app(Settings(open_dev_instance=True)).openapi()
    return [
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    ]


def _as_provider_sends(kwargs: dict[str, Any], path: str) -> None:
    """Serialize the body ourselves and, for three requests in four, make it a push that
    the provider signed, so generated payloads reach parsing and matching; the fourth
    keeps the generated headers (missing signatures, other events)."""
    headers: dict[str, str] = kwargs.setdefault("headers", {})
    if "json" in kwargs:
        kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
        headers.setdefault("Content-Type", "application/json")
    body = kwargs.get("data") or b""
    if isinstance(body, str):
        body = body.encode()
        kwargs["data"] = body
    choice = hashlib.sha256(body).digest()[0] % 4
    if choice == 0:
        return
    if choice == 1:  # aimed at the applied flow's trigger: matching, starting a run
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            payload["ref"] = "refs/heads/main"
            payload["repository"] = {"full_name": "org/app"}
            payload["project"] = {"path_with_namespace": "Org/App"}
            body = kwargs["data"] = json.dumps(payload).encode()
    for name in list(headers):
        if name.lower().startswith(
            ("x-hub-", "x-github-event", "x-gitlab-token", "x-gitlab-event")
        ):
            del headers[name]
    if path == "/hooks/github":
        digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature-256"] = f"sha256={digest}"
        headers["X-GitHub-Event"] = "push"
    else:
        headers["X-Gitlab-Token"] = GITLAB_TOKEN
        headers["X-Gitlab-Event"] = "Push Hook"


@pytest.mark.parametrize(("method", "path"), _operations())
def test_the_api_conforms_to_its_openapi(
    method: str, path: str, api_schema: Any, served: Served
) -> None:
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    try:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # nothing in this operation can be made invalid
        pass

    @given(case=st.one_of(*strategies), aim=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def exchange(case: Any, aim: bool) -> None:
        if aim and case.path_parameters:
            case.path_parameters = {
                key: served.known.get(key, value) for key, value in case.path_parameters.items()
            }
        kwargs = case.as_transport_kwargs(base_url=served.url, headers=bearer("admin"))
        if case.path.startswith("/hooks/"):
            _as_provider_sends(kwargs, case.path)
        kwargs.setdefault("timeout", 30)
        response = served.http.request(**kwargs)
        case.validate_response(
            response, checks=CHECKS, headers=kwargs.get("headers"), transport_kwargs=kwargs
        )
        for token in TOKENS.values():
            assert token not in response.text

    exchange()


def test_every_error_response_is_documented_with_the_error_body() -> None:
    """What the fuzzing cannot see: codes a route sends only in states it never reaches."""
    document = create_app(Settings(open_dev_instance=True)).openapi()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            for code, response in responses.items():
                if code.startswith(("4", "5")) and path != "/healthz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (
                        method,
                        path,
                        code,
                    )
            if path not in ("/healthz", "/metrics") and not path.startswith("/hooks/"):
                assert {"401", "403", "422"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
    assert "HTTPValidationError" not in json.dumps(document)
